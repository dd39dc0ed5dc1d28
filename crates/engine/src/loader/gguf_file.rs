//! GGUF container parser (ggml `docs/gguf.md`, versions 2 and 3): header, typed metadata, tensor infos and the
//! aligned data section of a memory-mapped file.
//!
//! Guarantees: parsing never panics and never allocates more than the file could describe. Every length is
//! checked against the bytes that remain (a string of length n needs n bytes; an array of n items needs at
//! least n bytes), so a corrupt length field is an `EngineError::ModelLoad` naming the file, not an OOM. Tensor
//! data is not copied: `tensor_storage` hands out `Storage::Mapped` windows into the shared map.
//!
//! Hand-written rather than a crate because the format is small and we need zero-copy windows into our own
//! `Arc<Mmap>` (the kernels' `Storage` type) plus the strict bounds checks above.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pagedllm_kernels::{GgmlType, Storage, WeightMatrix};

use crate::error::{EngineError, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Nested arrays are legal but never deeper than 2 in real files; the cap keeps recursion bounded.
const MAX_ARRAY_DEPTH: usize = 8;
/// Most entries reserved up front from a header count (see `parse`).
const MAX_RESERVED_ENTRIES: usize = 4096;

/// One metadata value (all GGUF value types; arrays may nest).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type that fits in u64 (GGUF writers differ on which width they use for counts and ids).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v as u64),
            Self::U16(v) => Some(v as u64),
            Self::U32(v) => Some(v as u64),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v as i64),
            Self::I16(v) => Some(v as i64),
            Self::I32(v) => Some(v as i64),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor info record. `dims[0]` is the contiguous (innermost) axis.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute byte offset in the file (data section start + the record's relative offset).
    pub file_offset: usize,
    pub byte_len: usize,
}

impl GgufTensorInfo {
    /// `[rows, cols]` of the tensor as a row-major matrix: cols = dims[0], rows = product of the rest.
    pub fn matrix_shape(&self) -> (usize, usize) {
        let cols = self.dims[0] as usize;
        let rows = self.dims[1..].iter().product::<u64>() as usize;
        (rows, cols)
    }
}

/// A parsed GGUF file holding its memory map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, GgufValue>,
    /// In file order.
    pub tensors: Vec<GgufTensorInfo>,
    map: Arc<memmap2::Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::ModelNotFound(format!("{} does not exist", path.display())),
            _ => EngineError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            },
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < 24 {
            return Err(EngineError::load(
                path.display(),
                format!("file is truncated: {len} bytes, shorter than a GGUF header"),
            ));
        }
        // SAFETY: the map is read-only; like every mmap-based loader (llama.cpp, candle) we assume the model
        // file is not truncated by another process while we run.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::Io {
            context: format!("memory-mapping {}", path.display()),
            source: e,
        })?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Self> {
        let err = |msg: String| EngineError::load(path.display(), msg);
        let mut r = Reader { buf: &map[..], pos: 0 };
        let magic = r.bytes(4, "magic").map_err(err)?;
        if magic != GGUF_MAGIC {
            return Err(err(format!(
                "not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = r.u32("version").map_err(err)?;
        if version != 2 && version != 3 {
            return Err(err(format!("GGUF version {version} is not supported (only 2 and 3)")));
        }
        let tensor_count = r.u64("tensor count").map_err(err)?;
        let kv_count = r.u64("metadata count").map_err(err)?;
        // A key-value pair takes at least 12 bytes (key length + type), a tensor info at least 24.
        if kv_count.saturating_mul(12) > r.remaining() as u64 || tensor_count.saturating_mul(24) > r.remaining() as u64
        {
            return Err(err(format!(
                "header claims {kv_count} metadata entries and {tensor_count} tensors, more than the file can hold (truncated or corrupt)"
            )));
        }

        // Capacities from header counts are capped: a count only bounded by the file size would still reserve
        // tens of bytes per claimed entry up front; growing past the cap costs nothing for real files.
        let mut metadata = HashMap::with_capacity((kv_count as usize).min(MAX_RESERVED_ENTRIES));
        for i in 0..kv_count {
            let key = r.string(&format!("metadata key #{i}")).map_err(err)?;
            let ty = r.u32(&format!("type of metadata `{key}`")).map_err(err)?;
            let value = r.value(ty, &key, 0).map_err(err)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(err(format!("general.alignment must be a power of two, found {v:?}"))),
            },
        };

        let mut raw_infos = Vec::with_capacity((tensor_count as usize).min(MAX_RESERVED_ENTRIES));
        for i in 0..tensor_count {
            let name = r.string(&format!("name of tensor #{i}")).map_err(err)?;
            let n_dims = r.u32(&format!("n_dims of tensor `{name}`")).map_err(err)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!(
                    "tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("dims of tensor `{name}`")).map_err(err)?);
            }
            let type_id = r.u32(&format!("type of tensor `{name}`")).map_err(err)?;
            let offset = r.u64(&format!("offset of tensor `{name}`")).map_err(err)?;
            raw_infos.push((name, dims, type_id, offset));
        }

        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(raw_infos.len());
        for (name, dims, type_id, offset) in raw_infos {
            let dtype = GgmlType::from_ggml_id(type_id).ok_or_else(|| {
                err(format!(
                    "tensor `{name}` has ggml type id {type_id}, which is not supported (supported: {})",
                    GgmlType::SUPPORTED
                ))
            })?;
            let byte_len = tensor_bytes(&name, &dims, dtype).map_err(err)?;
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(byte_len));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => tensors.push(GgufTensorInfo {
                    name,
                    dims,
                    dtype,
                    file_offset: s as usize,
                    byte_len: byte_len as usize,
                }),
                _ => {
                    return Err(err(format!(
                        "tensor `{name}` ({byte_len} bytes at data offset {offset}) extends past the end of the file ({file_len} bytes): truncated"
                    )))
                }
            }
        }

        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.map[info.file_offset..info.file_offset + info.byte_len]
    }

    /// A zero-copy window into the map.
    pub fn tensor_storage(&self, info: &GgufTensorInfo) -> Storage {
        Storage::Mapped {
            map: self.map.clone(),
            offset: info.file_offset,
            len: info.byte_len,
        }
    }

    /// The tensor as a `[rows, cols]` matrix over the mapped bytes.
    pub fn tensor_matrix(&self, info: &GgufTensorInfo) -> Result<WeightMatrix> {
        let (rows, cols) = info.matrix_shape();
        WeightMatrix::new(info.dtype, rows, cols, self.tensor_storage(info))
            .map_err(|m| EngineError::load(self.path.display(), format!("tensor `{}`: {m}", info.name)))
    }
}

/// Byte size of a tensor, with every product checked (a corrupt dim must not wrap around).
fn tensor_bytes(name: &str, dims: &[u64], dtype: GgmlType) -> Result<u64, String> {
    let ne0 = dims[0];
    if ne0 % dtype.block_size() as u64 != 0 {
        return Err(format!(
            "tensor `{name}`: row length {ne0} is not a multiple of the {dtype:?} block size {}",
            dtype.block_size()
        ));
    }
    let row_bytes = (ne0 / dtype.block_size() as u64).checked_mul(dtype.block_bytes() as u64);
    dims[1..]
        .iter()
        .fold(row_bytes, |acc, &d| acc.and_then(|a| a.checked_mul(d)))
        .filter(|&b| b <= usize::MAX as u64)
        .ok_or_else(|| format!("tensor `{name}` has absurd dimensions {dims:?}"))
}

/// A bounds-checked little-endian cursor. Errors are plain strings; the caller adds the file name.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "file is truncated while reading {what} (needs {n} bytes at offset {}, file has {})",
                self.pos,
                self.buf.len()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let b = self.bytes(N, what)?;
        Ok(b.try_into().expect("slice has length N"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "{what}: string length {len} exceeds the {} bytes left in the file (truncated or corrupt)",
                self.remaining()
            ));
        }
        let b = self.bytes(len as usize, what)?;
        // Tokenizer vocabularies may hold invalid UTF-8 fragments; keep them lossily rather than failing.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("metadata `{key}`: invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string(&format!("metadata `{key}`"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let item_ty = self.u32(key)?;
                let count = self.u64(key)?;
                // Every item takes at least one byte, so the count is capped by what is left.
                if count > self.remaining() as u64 {
                    return Err(format!(
                        "metadata `{key}`: array of {count} items cannot fit in the {} bytes left (truncated or corrupt)",
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity((count as usize).min(MAX_RESERVED_ENTRIES));
                for _ in 0..count {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(format!("metadata `{key}` has unknown value type {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf_writer::{s, strs, write_file, GgufWriter};
    use proptest::prelude::*;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", s("llama"))
            .kv("u8", GgufValue::U8(200))
            .kv("i8", GgufValue::I8(-5))
            .kv("u16", GgufValue::U16(65000))
            .kv("i16", GgufValue::I16(-30000))
            .kv("u32", GgufValue::U32(4_000_000_000))
            .kv("i32", GgufValue::I32(-7))
            .kv("f32", GgufValue::F32(1.5))
            .kv("bool", GgufValue::Bool(true))
            .kv("u64", GgufValue::U64(1 << 40))
            .kv("i64", GgufValue::I64(-(1 << 40)))
            .kv("f64", GgufValue::F64(-2.25))
            .kv("strings", strs(&["a", "bc", ""]))
            .kv(
                "nested",
                GgufValue::Array(vec![
                    GgufValue::Array(vec![GgufValue::I32(1)]),
                    GgufValue::Array(vec![GgufValue::I32(2)]),
                ]),
            )
            .tensor_f32("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .tensor(
                "h",
                &[4],
                1,
                [1.0f32, -2.0, 0.5, 0.0]
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            )
            .tensor("q", &[32, 2], 8, (0..68).map(|i| i as u8).collect());
        w
    }

    #[test]
    fn reads_back_every_value_type_and_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        for version in [2, 3] {
            let mut w = sample();
            w.version = version;
            let f = GgufFile::open(&write_file(tmp.path(), "m.gguf", &w.to_bytes())).unwrap();
            assert_eq!(f.version, version);
            for (k, v) in &w.metadata {
                assert_eq!(f.get(k), Some(v), "{k}");
            }
            let a = f.tensor_info("a").unwrap();
            assert_eq!(
                (a.dims.clone(), a.dtype, a.matrix_shape()),
                (vec![3, 2], GgmlType::F32, (2, 3))
            );
            assert_eq!(a.file_offset % 32, 0);
            let m = f.tensor_matrix(a).unwrap();
            assert!(matches!(m.storage, Storage::Mapped { .. }));
            assert_eq!(
                m.row(1),
                &[4.0f32, 5.0, 6.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>()[..]
            );
            let q = f.tensor_info("q").unwrap();
            assert_eq!((q.dtype, q.byte_len), (GgmlType::Q8_0, 68));
            assert_eq!(f.tensor_bytes(q), &w.tensors[2].data[..]);
            assert_eq!(f.tensor_bytes(f.tensor_info("h").unwrap()), &w.tensors[1].data[..]);
        }
    }

    #[test]
    fn honours_general_alignment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = sample();
        w.kv("general.alignment", GgufValue::U32(256));
        let f = GgufFile::open(&write_file(tmp.path(), "m.gguf", &w.to_bytes())).unwrap();
        for (t, want) in f.tensors.iter().zip(&w.tensors) {
            assert_eq!(t.file_offset % 256, 0);
            assert_eq!(f.tensor_bytes(t), &want.data[..]);
        }
        w.metadata.last_mut().unwrap().1 = GgufValue::U32(48);
        let e = GgufFile::open(&write_file(tmp.path(), "bad.gguf", &w.to_bytes()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
    }

    fn assert_load_error(bytes: &[u8], dir: &Path, expect: &str) {
        let path = write_file(dir, "broken.gguf", bytes);
        match GgufFile::open(&path) {
            Err(EngineError::ModelLoad { path: p, message }) => {
                assert_eq!(p, path.display().to_string());
                assert!(message.contains(expect), "`{message}` should mention `{expect}`");
            }
            Err(e) => panic!("expected ModelLoad, got {e}"),
            Ok(_) => panic!("a broken file ({} bytes) parsed", bytes.len()),
        }
    }

    #[test]
    fn missing_file_is_model_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("absent.gguf");
        match GgufFile::open(&path) {
            Err(EngineError::ModelNotFound(m)) => assert!(m.contains(&path.display().to_string()), "{m}"),
            Err(e) => panic!("expected ModelNotFound, got {e}"),
            Ok(_) => panic!("opened a missing file"),
        }
    }

    #[test]
    fn every_truncation_is_a_load_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert_load_error(&bytes[..cut], tmp.path(), "truncated");
        }
    }

    #[test]
    fn bad_magic_version_and_type() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = sample().to_bytes();
        bytes[..4].copy_from_slice(b"GGML");
        assert_load_error(&bytes, tmp.path(), "not a GGUF file");
        let mut w = sample();
        w.version = 1;
        assert_load_error(&w.to_bytes(), tmp.path(), "version 1");
        let mut w = sample();
        w.tensors[1].type_id = 11; // Q3_K
        let path = write_file(tmp.path(), "q3.gguf", &w.to_bytes());
        let e = GgufFile::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("`h`") && e.contains("type id 11") && e.contains(GgmlType::SUPPORTED),
            "{e}"
        );
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = GgufWriter::new();
        w.kv("k", s("v"));
        let good = w.to_bytes();
        // kv count claims u64::MAX entries.
        let mut bytes = good.clone();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_load_error(&bytes, tmp.path(), "more than the file can hold");
        // Key length (right after the 24-byte header) claims 2^60 bytes.
        let mut bytes = good.clone();
        bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_load_error(&bytes, tmp.path(), "exceeds");
        // An array claiming 2^62 items.
        let mut w = GgufWriter::new();
        w.kv("arr", GgufValue::Array(vec![GgufValue::U8(1)]));
        let mut bytes = w.to_bytes();
        let count_at = 24 + 8 + 3 + 4 + 4;
        bytes[count_at..count_at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert_load_error(&bytes, tmp.path(), "cannot fit");
        // A tensor whose dims overflow u64 when multiplied.
        let mut w = GgufWriter::new();
        w.tensor("t", &[u64::MAX / 2, 4], 0, vec![0; 8]);
        assert_load_error(&w.to_bytes(), tmp.path(), "absurd dimensions");
        // Offset past the end.
        let mut w = GgufWriter::new();
        w.tensor_f32("t", &[2], &[1.0, 2.0]);
        let mut bytes = w.to_bytes();
        let off_at = 24 + 8 + 1 + 4 + 8 + 4;
        bytes[off_at..off_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert_load_error(&bytes, tmp.path(), "past the end");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random byte corruption either parses or is a ModelLoad error: never a panic.
        #[test]
        fn corrupted_bytes_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let tmp = tempfile::tempdir().unwrap();
            let mut bytes = sample().to_bytes();
            for (at, v) in edits {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            let path = write_file(tmp.path(), "fuzz.gguf", &bytes);
            match GgufFile::open(&path) {
                Ok(f) => for t in &f.tensors { let _ = f.tensor_bytes(t); },
                Err(e) => prop_assert!(matches!(e, EngineError::ModelLoad { .. }), "{e}"),
            }
        }
    }
}
