//! Tokenizer placeholder.
pub mod source;
pub use source::{GgufTokenizerData, TokenizerSource};
