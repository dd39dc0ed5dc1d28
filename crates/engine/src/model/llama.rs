//! (llama) placeholder: filled in by the kernels/model owner.
