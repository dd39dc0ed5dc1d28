// The prebuilt platform packages, one line each: the napi-rs platform suffix, the Rust target it is built for,
// and the npm `os`/`cpu`/`libc` fields that make npm install only the matching one. `-cuda` variants hold the
// addon built with the `cuda` cargo feature and are chosen at run time for `device: 'cuda'` (src/native.ts).
// Naming follows napi-rs (`<binaryName>-<platform>`), variants follow node-llama-cpp (`<platform>-cuda`).

export const PLATFORMS = [
  { suffix: 'linux-x64-gnu', target: 'x86_64-unknown-linux-gnu', os: 'linux', cpu: 'x64', libc: 'glibc' },
  { suffix: 'linux-arm64-gnu', target: 'aarch64-unknown-linux-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc' },
  { suffix: 'darwin-arm64', target: 'aarch64-apple-darwin', os: 'darwin', cpu: 'arm64' },
  { suffix: 'darwin-x64', target: 'x86_64-apple-darwin', os: 'darwin', cpu: 'x64' },
  { suffix: 'win32-x64-msvc', target: 'x86_64-pc-windows-msvc', os: 'win32', cpu: 'x64' },
  { suffix: 'linux-x64-gnu', target: 'x86_64-unknown-linux-gnu', os: 'linux', cpu: 'x64', libc: 'glibc', cuda: true },
  { suffix: 'win32-x64-msvc', target: 'x86_64-pc-windows-msvc', os: 'win32', cpu: 'x64', cuda: true },
];

/** `linux-x64-gnu` or `linux-x64-gnu-cuda`: the folder under npm/ and the tail of the package name. */
export function packageDir(p) {
  return p.cuda ? `${p.suffix}-cuda` : p.suffix;
}

export function packageName(p) {
  return `pagedllm-${packageDir(p)}`;
}

/** The addon's file name inside the package (napi-rs's `<binaryName>.<platform>.node`). */
export function binaryFile(p) {
  return `pagedllm.${p.suffix}.node`;
}

export function findPlatform(dir) {
  const p = PLATFORMS.find((x) => packageDir(x) === dir);
  if (!p) throw new Error(`unknown platform package '${dir}' (known: ${PLATFORMS.map(packageDir).join(', ')})`);
  return p;
}
