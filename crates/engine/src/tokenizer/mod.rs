//! Text in and out of the engine: a [`Tokenizer`] built from GGUF metadata or HF files, an
//! [`IncrementalDetokenizer`] that streams UTF-8-safe text and applies stop strings, and [`ChatTemplate`] for
//! rendering chat messages with a model's Jinja template.
pub mod chat_template;
pub mod detokenizer;
mod gguf_tokenizer;
mod hf_config;
pub mod source;
mod template_functions;
pub mod token_bytes;
#[allow(clippy::module_inception)]
pub mod tokenizer;

#[cfg(test)]
pub(crate) mod reference_tests;

pub use chat_template::ChatTemplate;
pub use detokenizer::{DetokenizedStep, IncrementalDetokenizer};
pub use source::{GgufTokenizerData, TokenizerSource};
pub use tokenizer::Tokenizer;
