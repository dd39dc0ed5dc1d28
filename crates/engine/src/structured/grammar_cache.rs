//! Turning a request's `structured_outputs` into a compiled llguidance grammar, once per distinct spec.
//!
//! Follows vLLM's llguidance backend (`vllm/v1/structured_output/backend_guidance.py`): `json` is a JSON Schema
//! with `x-guidance` options (flexible whitespace unless `disable_any_whitespace`), `json_object` is the schema
//! `{"type": "object"}`, `regex` a Rust-syntax regex, `choice` an alternation of the escaped strings, `grammar`
//! llguidance's Lark dialect. Compilation runs in `LLMEngine::add_request`, before the request reaches the
//! scheduler, so a slow grammar never stalls a step; an invalid spec is `InvalidParam` naming
//! `structured_outputs.<kind>` with llguidance's reason. llguidance bounds its own work (lexer fuel, grammar size),
//! so no spec can hang compilation.
//!
//! Compiled grammars are kept in a bounded LRU keyed by the spec's JSON text; one cache belongs to one engine, so
//! to one tokenizer, which makes the key (spec, tokenizer). Each request gets a `deep_clone` of the cached
//! matcher: its own parser state, sharing the compiled lexer and grammar.

use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use lru::LruCache;
use serde_json::{json, Value};

use super::token_env::EngineTokEnv;
use crate::error::{EngineError, Result};
use crate::sampling_params::StructuredOutputs;
use crate::tokenizer::Tokenizer;

/// Distinct specs kept compiled (vLLM keeps none; SGLang's grammar cache is unbounded).
pub const GRAMMAR_CACHE_ENTRIES: usize = 256;

/// A compiled constraint; `new_matcher` gives a fresh, independent matcher in the start state.
pub struct CompiledGrammar {
    /// Which `structured_outputs` field it came from (for error messages).
    pub kind: &'static str,
    // `Matcher` is `Send` but not `Sync`; the lock is held only to clone it.
    template: Mutex<Matcher>,
}

impl CompiledGrammar {
    pub fn new_matcher(&self) -> Matcher {
        self.template.lock().unwrap_or_else(|e| e.into_inner()).deep_clone()
    }
}

/// The engine's grammar compiler and cache. The llguidance parser factory (the token trie and its slices, some
/// tens of milliseconds to build) is made on first use, so engines that never see a constraint never pay for it.
pub struct GrammarCache {
    tokenizer: Option<Arc<Tokenizer>>,
    n_vocab: usize,
    eos_token_ids: Vec<u32>,
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
    cache: Mutex<LruCache<String, Arc<CompiledGrammar>>>,
}

impl GrammarCache {
    pub fn new(tokenizer: Option<Arc<Tokenizer>>, n_vocab: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            tokenizer,
            n_vocab,
            eos_token_ids,
            factory: OnceLock::new(),
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(GRAMMAR_CACHE_ENTRIES).expect("non-zero"))),
        }
    }

    fn factory(&self) -> Result<&ParserFactory> {
        let built = self.factory.get_or_init(|| {
            let tokenizer = self
                .tokenizer
                .clone()
                .ok_or_else(|| "structured outputs need a tokenizer; this model has none".to_string())?;
            let env = EngineTokEnv::new(tokenizer, self.n_vocab, &self.eos_token_ids)
                .map_err(|e| e.to_string())?
                .into_tok_env();
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("llguidance: {e}"))?;
            factory.quiet();
            Ok(factory)
        });
        built
            .as_ref()
            .map_err(|message| EngineError::invalid("structured_outputs", message.clone()))
    }

    /// The compiled grammar for `spec` (validated to name exactly one kind), from the cache when seen before.
    pub fn get_or_compile(&self, spec: &StructuredOutputs) -> Result<Arc<CompiledGrammar>> {
        let key = serde_json::to_string(spec).expect("spec serializes");
        if let Some(hit) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit.clone());
        }
        let compiled = Arc::new(self.compile(spec)?);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, compiled.clone());
        Ok(compiled)
    }

    /// Compiles without the cache (the benchmark measures this), on a thread of its own with a large stack
    /// (see [`COMPILE_STACK_BYTES`]), whatever thread calls it.
    pub fn compile(&self, spec: &StructuredOutputs) -> Result<CompiledGrammar> {
        let (kind, grammar) = to_grammar(spec)?;
        let factory = self.factory()?;
        let field = format!("structured_outputs.{kind}");
        on_compile_stack(|| {
            // llguidance reports bad grammars as errors; the unwind guard is a last line of defence for a bug in it.
            let parser = catch_unwind(AssertUnwindSafe(|| factory.create_parser(grammar)))
                .map_err(|_| EngineError::invalid(&field, "llguidance failed on this grammar (internal panic)"))?
                .map_err(|e| EngineError::invalid(&field, e.to_string()))?;
            let matcher = Matcher::new(Ok(parser));
            if let Some(e) = matcher.get_error() {
                return Err(EngineError::invalid(&field, e));
            }
            Ok(CompiledGrammar {
                kind,
                template: Mutex::new(matcher),
            })
        })?
    }
}

/// Stack of the thread a grammar compiles on. llguidance's compiler recurses over the grammar, and a large schema
/// (a few thousand properties, still under llguidance's own size limit) overflowed the 2 MiB stack of a tokio or
/// rayon worker thread, killing the process (found by test/structured-compile-async.test.ts, which compiles on a
/// blocking thread). Stack pages are committed only when touched, so a large reservation costs address space.
pub const COMPILE_STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a scoped thread with a [`COMPILE_STACK_BYTES`] stack (one thread per cache miss: its start-up,
/// some tens of microseconds, is small beside any compile).
fn on_compile_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pagedllm-grammar".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| EngineError::Internal(format!("starting the grammar compile thread: {e}")))?
            .join()
            .map_err(|_| EngineError::Internal("the grammar compile thread panicked".into()))
    })
}

/// The llguidance grammar for `spec`, and the kind it came from.
pub fn to_grammar(spec: &StructuredOutputs) -> Result<(&'static str, TopLevelGrammar)> {
    let kinds = spec.kinds();
    let [kind] = kinds.as_slice() else {
        return Err(EngineError::invalid(
            "structured_outputs",
            "set exactly one of json, regex, choice, grammar, json_object",
        ));
    };
    let kind = *kind;
    let field = format!("structured_outputs.{kind}");
    let grammar = match kind {
        "json" => {
            let schema = match spec.json.clone().expect("kind says json") {
                Value::String(text) => serde_json::from_str::<Value>(&text)
                    .map_err(|e| EngineError::invalid(&field, format!("not valid JSON: {e}")))?,
                other => other,
            };
            TopLevelGrammar::from_json_schema(with_options(schema, spec, &field)?)
        }
        "json_object" => TopLevelGrammar::from_json_schema(with_options(json!({"type": "object"}), spec, &field)?),
        "regex" => TopLevelGrammar::from_regex(spec.regex.as_deref().expect("kind says regex")),
        "choice" => {
            let choices = spec.choice.as_ref().expect("kind says choice");
            if choices.is_empty() {
                return Err(EngineError::invalid(&field, "must list at least one choice"));
            }
            let alternation: Vec<String> = choices.iter().map(|c| regex_syntax::escape(c)).collect();
            TopLevelGrammar::from_regex(&format!("({})", alternation.join("|")))
        }
        "grammar" => {
            let text = spec.grammar.clone().expect("kind says grammar");
            if text.trim().is_empty() {
                return Err(EngineError::invalid(&field, "must not be empty"));
            }
            TopLevelGrammar::from_lark(text)
        }
        _ => unreachable!("kinds() names only these"),
    };
    Ok((kind, grammar))
}

/// `schema` with llguidance's `x-guidance` options set from the request (a boolean schema becomes its object
/// form, since the options live in an object).
fn with_options(schema: Value, spec: &StructuredOutputs, field: &str) -> Result<Value> {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Bool(false) => return Err(EngineError::invalid(field, "the schema `false` matches nothing")),
        Value::Object(o) => Value::Object(o),
        other => {
            return Err(EngineError::invalid(
                field,
                format!("a JSON Schema must be an object or a boolean, got {other}"),
            ))
        }
    };
    let options = json!({ "whitespace_flexible": !spec.disable_any_whitespace });
    let obj = schema.as_object_mut().expect("object");
    match obj.get_mut("x-guidance") {
        // The caller's own llguidance options win; only the whitespace flag is filled in.
        Some(Value::Object(own)) => {
            own.entry("whitespace_flexible").or_insert(options["whitespace_flexible"].clone());
        }
        _ => {
            obj.insert("x-guidance".into(), options);
        }
    }
    Ok(schema)
}
