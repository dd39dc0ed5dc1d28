//! Structured outputs (constrained decoding) with llguidance: a request's `structured_outputs` (JSON Schema,
//! `json_object`, regex, choice, Lark grammar) is compiled once per distinct spec (`grammar_cache`), each sample
//! tracks its position in the grammar (`sample_matcher`), the allowed-token mask for its next token is computed on
//! a small worker pool while the forward pass runs (`mask_pool`), and the CPU sampler sets every disallowed logit
//! to -inf before anything else (so log-probs are those of the masked distribution, as in vLLM).
//! `token_env` spells the vocabulary as bytes for llguidance's token trie.

pub mod grammar_cache;
pub mod mask_pool;
pub mod sample_matcher;
pub mod token_env;

#[cfg(test)]
mod tests;

pub use grammar_cache::{CompiledGrammar, GrammarCache, GRAMMAR_CACHE_ENTRIES};
pub use mask_pool::MaskPool;
pub use sample_matcher::{mask_allows, SampleConstraint};
