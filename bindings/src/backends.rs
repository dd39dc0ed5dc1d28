//! `backends()`: which compute backends this addon was compiled with. The loader (`src/native.ts`) asks it to
//! tell the CPU platform package from its `-cuda` variant: both export the same `Engine` class, and only this
//! list says whether `device: 'cuda'` can work at all (whether a driver and a GPU are present is checked later,
//! when an engine starts on the device).

use napi_derive::napi;

/// The backends compiled into this addon: always `"cpu"`, plus `"cuda"` when built with the `cuda` feature
/// (`PAGEDLLM_CUDA=1`, the `pagedllm-<platform>-cuda` packages).
#[napi]
pub fn backends() -> Vec<String> {
    let mut list = vec!["cpu".to_string()];
    if cfg!(feature = "cuda") {
        list.push("cuda".to_string());
    }
    list
}
