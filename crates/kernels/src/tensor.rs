//! Weight storage: a 2-D weight matrix kept in its on-disk format (f32, f16, bf16 or a GGML block quant),
//! either memory-mapped from the model file or owned. Kernels read it in place; nothing is inflated to f32 at
//! load time (that would multiply the resident size of a Q4 model by ~7).

use std::sync::Arc;

use crate::quant::GgmlType;

/// Bytes of a tensor: a window into a shared memory map, or an owned buffer (e.g. rows re-ordered at load).
#[derive(Clone)]
pub enum Storage {
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Storage {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned(v) => v.as_slice(),
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped { offset, len, .. } => write!(f, "Mapped({offset}..+{len})"),
            Storage::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// A row-major weight matrix `[rows, cols]` = HF's `[out_features, in_features]`. Rows are contiguous, so each
/// row is `cols / dtype.block_size()` quant blocks. `y = x · Wᵀ` is the only product the models need.
#[derive(Clone, Debug)]
pub struct WeightMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub storage: Storage,
}

impl WeightMatrix {
    /// Checks that the byte length matches the shape and type; loaders call this so a truncated file is an
    /// error at load, not an out-of-bounds read during a forward pass.
    pub fn new(dtype: GgmlType, rows: usize, cols: usize, storage: Storage) -> Result<Self, String> {
        if cols % dtype.block_size() != 0 {
            return Err(format!(
                "{dtype:?} needs the row length ({cols}) to be a multiple of {}",
                dtype.block_size()
            ));
        }
        let want = dtype.row_bytes(cols) * rows;
        let have = storage.bytes().len();
        if want != have {
            return Err(format!("{dtype:?} [{rows}, {cols}] needs {want} bytes, found {have}"));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            storage,
        })
    }

    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(data.len(), rows * cols);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: GgmlType::F32,
            rows,
            cols,
            storage: Storage::Owned(Arc::new(bytes)),
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    /// The raw bytes of row `r`.
    /// Rows `start .. start + n` as a matrix of their own over the same bytes (one expert of a stacked
    /// `[experts * rows, cols]` tensor). `None` when the range is outside the matrix.
    pub fn row_range(&self, start: usize, n: usize) -> Option<WeightMatrix> {
        if start.checked_add(n)? > self.rows {
            return None;
        }
        let rb = self.row_bytes();
        let storage = match &self.storage {
            Storage::Mapped { map, offset, .. } => Storage::Mapped {
                map: map.clone(),
                offset: offset + start * rb,
                len: n * rb,
            },
            Storage::Owned(v) => Storage::Owned(Arc::new(v[start * rb..(start + n) * rb].to_vec())),
        };
        Some(WeightMatrix {
            dtype: self.dtype,
            rows: n,
            cols: self.cols,
            storage,
        })
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.storage.bytes()[r * rb..(r + 1) * rb]
    }
}
