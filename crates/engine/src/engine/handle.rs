//! `LLMEngine`: the thread-safe public handle. `start` loads the model and spawns the engine thread;
//! `add_request` validates and tokenizes on the caller's thread (so bad input fails at once, naming the
//! problem) and hands the request over a channel; each request gets its own output channel (`RequestStream`).
//! A panic or error in a step is caught: live requests get an error and the engine keeps serving. When
//! `MAX_CONSECUTIVE_STEP_FAILURES` steps fail in a row (a sticky device error: the backend is wedged), the engine
//! stops: in-flight requests get an error, the thread exits, `is_alive()` turns false and every call fails with
//! `EngineError::Closed`, so health checks report it and a supervisor can restart the process.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::structured::GrammarCache;
use crate::tokenizer::{ChatTemplate, Tokenizer};

use super::builder::{build_engine, EngineParts};
use super::core::{EngineCore, PreparedRequest};
use super::request_group::now_secs;
use super::{EngineStats, ModelInfo, Prompt, RequestInput, RequestOutput};

/// Failed steps in a row after which the backend is taken to be wedged and the engine stops. One failure may be
/// a bad batch (its requests fail, the rest of the engine goes on); several in a row, each with fresh requests,
/// mean every step will fail.
pub const MAX_CONSECUTIVE_STEP_FAILURES: u32 = 3;

enum Command {
    Add(Box<PreparedRequest>),
    Abort(String),
    Shutdown,
}

struct Shared {
    info: ModelInfo,
    tokenizer: Option<Arc<Tokenizer>>,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    generation_defaults: crate::loader::GenerationDefaults,
    cmd_tx: Mutex<Option<Sender<Command>>>,
    stats: Arc<Mutex<EngineStats>>,
    /// External ids of requests that have not finished yet (duplicate-id check, `abort`'s answer).
    live: Arc<Mutex<HashSet<String>>>,
    alive: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_id: AtomicU64,
    /// Tokens the whole KV cache holds: a longer request could never run.
    kv_capacity_tokens: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    /// Compiled `structured_outputs` grammars (compiled here, on the caller's thread, never in a step).
    grammars: GrammarCache,
}

#[derive(Clone)]
pub struct LLMEngine {
    shared: Arc<Shared>,
}

impl LLMEngine {
    /// Loads the model (`""` = the embedded default) and starts the engine thread. Blocking: seconds.
    pub fn start(model: &str, config: EngineConfig) -> Result<Self> {
        let EngineParts {
            core,
            info,
            tokenizer,
            chat_template,
            eos_token_ids,
            generation_defaults,
            pool,
        } = build_engine(model, &config)?;
        let (cmd_tx, cmd_rx) = channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let live = Arc::new(Mutex::new(HashSet::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let kv_capacity_tokens = info.num_kv_blocks * info.block_size;
        let max_num_seqs = config.max_num_seqs;
        let max_num_batched_tokens = config.max_num_batched_tokens;
        let thread = {
            let (stats, live, alive) = (stats.clone(), live.clone(), alive.clone());
            std::thread::Builder::new()
                .name("pagedllm-engine".into())
                .spawn(move || {
                    let result = catch_unwind(AssertUnwindSafe(|| engine_loop(core, cmd_rx, &stats, &live, &pool)));
                    if result.is_err() {
                        eprintln!("pagedllm: the engine thread died");
                    }
                    alive.store(false, Ordering::SeqCst);
                    live.lock().unwrap_or_else(|e| e.into_inner()).clear();
                })
                .map_err(|e| EngineError::Io {
                    context: "spawning the engine thread".into(),
                    source: e,
                })?
        };
        let grammars = GrammarCache::new(tokenizer.clone(), info.vocab_size, eos_token_ids.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                grammars,
                info,
                tokenizer,
                chat_template,
                eos_token_ids,
                generation_defaults,
                cmd_tx: Mutex::new(Some(cmd_tx)),
                stats,
                live,
                alive,
                thread: Mutex::new(Some(thread)),
                next_id: AtomicU64::new(0),
                kv_capacity_tokens,
                max_num_seqs,
                max_num_batched_tokens,
            }),
        })
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    pub fn generation_defaults(&self) -> &crate::loader::GenerationDefaults {
        &self.shared.generation_defaults
    }

    /// `SamplingParams` from a JSON object of snake_case fields: vLLM's defaults, overlaid with the model's
    /// `generation_config.json` defaults, overlaid with the caller's fields.
    pub fn sampling_params_from_json(&self, user: &serde_json::Value) -> Result<crate::SamplingParams> {
        super::sampling_defaults::resolve_sampling_params(&self.shared.generation_defaults, user)
    }

    /// A `RequestInput` from JSON (snake_case, as the binding receives it), its `params` resolved against the
    /// model's generation defaults (fields the caller left out take the model's defaults, as in vLLM).
    pub fn request_input_from_json(&self, json: &str) -> Result<RequestInput> {
        let mut v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| EngineError::invalid("input", format!("malformed JSON: {e}")))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| EngineError::invalid("input", "must be an object"))?;
        let params = self.sampling_params_from_json(obj.get("params").unwrap_or(&serde_json::Value::Null))?;
        obj.insert("params".into(), serde_json::to_value(params).expect("params serialize"));
        serde_json::from_value(v).map_err(|e| EngineError::invalid("input", e.to_string()))
    }

    fn send(&self, cmd: Command) -> Result<()> {
        if !self.is_alive() {
            return Err(EngineError::Closed);
        }
        let guard = self.shared.cmd_tx.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .ok_or(EngineError::Closed)?
            .send(cmd)
            .map_err(|_| EngineError::Closed)
    }

    /// Validates and tokenizes on the caller's thread (errors come back at once), then queues the request.
    pub fn add_request(&self, input: RequestInput) -> Result<RequestStream> {
        if !self.is_alive() {
            return Err(EngineError::Closed);
        }
        let info = &self.shared.info;
        let params = input.params;
        params.validate(info.vocab_size)?;
        if params.num_sequences() > self.shared.max_num_seqs {
            let field = if params.selects_best() { "best_of" } else { "n" };
            return Err(EngineError::invalid(
                field,
                format!(
                    "{} samples exceed max_num_seqs ({})",
                    params.num_sequences(),
                    self.shared.max_num_seqs
                ),
            ));
        }
        if !params.stop.is_empty() && self.shared.tokenizer.is_none() {
            return Err(EngineError::invalid(
                "stop",
                "stop strings need a tokenizer; this model has none",
            ));
        }
        // Compiled before the request is queued: an invalid constraint fails here, naming its field.
        let grammar = match &params.structured_outputs {
            Some(spec) => Some(self.shared.grammars.get_or_compile(spec)?),
            None => None,
        };
        let prompt_ids = match input.prompt {
            Prompt::Text(text) => {
                let tok = self.shared.tokenizer.as_ref().ok_or_else(|| {
                    EngineError::invalid("prompt", "this model has no tokenizer: pass token ids instead of text")
                })?;
                tok.encode(&text, input.add_special_tokens)?
            }
            Prompt::TokenIds(ids) => {
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                    return Err(EngineError::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary (size {})", info.vocab_size),
                    ));
                }
                ids
            }
        };
        if prompt_ids.is_empty() {
            return Err(EngineError::invalid("prompt", "the prompt is empty"));
        }
        let max_len = info.max_model_len.min(self.shared.kv_capacity_tokens);
        let room = max_len.saturating_sub(prompt_ids.len());
        let max_tokens = match params.max_tokens {
            Some(m) if prompt_ids.len() + m > max_len => {
                return Err(EngineError::ContextLength {
                    prompt_len: prompt_ids.len(),
                    max_tokens: m,
                    max_model_len: max_len,
                })
            }
            Some(m) => m,
            None if room == 0 => {
                return Err(EngineError::ContextLength {
                    prompt_len: prompt_ids.len(),
                    max_tokens: 1,
                    max_model_len: max_len,
                })
            }
            None => room,
        };
        if params.beam_search.is_some() {
            crate::scheduler::check_beam_search_fits(
                prompt_ids.len(),
                max_tokens,
                params.num_sequences(),
                info.block_size,
                info.num_kv_blocks,
                self.shared.max_num_batched_tokens,
            )?;
        }
        let external_id = match input.request_id {
            Some(id) if id.is_empty() => return Err(EngineError::invalid("request_id", "must not be empty")),
            Some(id) => id,
            None => format!("req-{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        {
            let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
            if !live.insert(external_id.clone()) {
                return Err(EngineError::invalid(
                    "request_id",
                    format!("`{external_id}` is already running"),
                ));
            }
        }
        let (tx, rx) = unbounded_channel();
        let prepared = PreparedRequest {
            external_id: external_id.clone(),
            prompt_ids,
            params: Arc::new(params),
            max_tokens,
            priority: input.priority,
            cache_salt: input.cache_salt,
            tx,
            arrival_time: now_secs(),
            grammar,
        };
        if let Err(e) = self.send(Command::Add(Box::new(prepared))) {
            self.shared
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&external_id);
            return Err(e);
        }
        let abort_tx = self.shared.cmd_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(RequestStream {
            request_id: external_id,
            rx,
            done: false,
            abort_tx,
        })
    }

    /// Aborts a live request; returns false when no such request is live.
    pub fn abort(&self, request_id: &str) -> bool {
        let live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(request_id);
        live && self.send(Command::Abort(request_id.to_string())).is_ok()
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn tokenizer(&self) -> Result<&Arc<Tokenizer>> {
        self.shared
            .tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::Tokenizer("this model has no tokenizer".into()))
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text, add_special_tokens)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.shared.info.vocab_size) {
            return Err(EngineError::invalid(
                "tokens",
                format!("token id {bad} is outside the vocabulary"),
            ));
        }
        self.tokenizer()?.decode(ids, skip_special_tokens)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.shared.eos_token_ids
    }

    /// Renders chat messages (`[{role, content}]`) with the model's template, or `chat_template` when given.
    pub fn apply_chat_template(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        chat_template: Option<&str>,
        extra: Option<&serde_json::Value>,
    ) -> Result<String> {
        match chat_template {
            Some(src) => {
                let tok = self.shared.tokenizer.as_ref();
                let t = ChatTemplate::new(src, tok.and_then(|t| t.bos_token()), tok.and_then(|t| t.eos_token()))?;
                t.render(messages, add_generation_prompt, extra)
            }
            None => self
                .shared
                .chat_template
                .as_ref()
                .ok_or_else(|| EngineError::ChatTemplate("the model has no chat template; pass one".into()))?
                .render(messages, add_generation_prompt, extra),
        }
    }

    /// False once the engine thread has exited (closed or died).
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Idempotent: aborts in-flight requests, stops and joins the engine thread.
    pub fn shutdown(&self) {
        let tx = self.shared.cmd_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Command::Shutdown);
        }
        let handle = self.shared.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared.alive.store(false, Ordering::SeqCst);
    }
}

fn engine_loop(
    mut core: EngineCore,
    rx: Receiver<Command>,
    stats: &Mutex<EngineStats>,
    live: &Mutex<HashSet<String>>,
    pool: &rayon::ThreadPool,
) {
    let forget = |ids: &[String]| {
        let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            l.remove(id);
        }
    };
    let publish = |core: &EngineCore| *stats.lock().unwrap_or_else(|e| e.into_inner()) = core.stats();
    let mut consecutive_failures = 0u32;
    loop {
        // Idle: block until a command arrives. Busy: take what is queued and step.
        let first = if core.has_work() {
            None
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let mut shutdown = false;
        for cmd in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match cmd {
                Command::Add(p) => core.add(*p),
                Command::Abort(id) => {
                    if core.abort(&id) {
                        forget(&[id]);
                    }
                }
                Command::Shutdown => shutdown = true,
            }
        }
        if shutdown {
            core.fail_all(|| EngineError::Closed);
            live.lock().unwrap_or_else(|e| e.into_inner()).clear();
            break;
        }
        if core.has_work() {
            let failure = match catch_unwind(AssertUnwindSafe(|| pool.install(|| core.step()))) {
                Ok(Ok(done)) => {
                    forget(&done);
                    consecutive_failures = 0;
                    None
                }
                Ok(Err(e)) => Some(format!("step failed: {e}")),
                Err(_) => Some("the engine step panicked".to_string()),
            };
            if let Some(msg) = failure {
                consecutive_failures += 1;
                let wedged = consecutive_failures >= MAX_CONSECUTIVE_STEP_FAILURES;
                eprintln!("pagedllm: {msg}; failing the requests in flight ({consecutive_failures} failed step(s) in a row)");
                let msg = if wedged {
                    format!("{msg}; {consecutive_failures} steps failed in a row, the backend is wedged and the engine stopped")
                } else {
                    msg
                };
                core.fail_all(|| EngineError::Internal(msg.clone()));
                live.lock().unwrap_or_else(|e| e.into_inner()).clear();
                if wedged {
                    eprintln!("pagedllm: {MAX_CONSECUTIVE_STEP_FAILURES} engine steps failed in a row: the backend is wedged; stopping the engine");
                    break;
                }
            }
        }
        publish(&core);
    }
    publish(&core);
}

/// The output channel of one request. Dropping it before the request finished aborts the request.
pub struct RequestStream {
    pub request_id: String,
    rx: UnboundedReceiver<Result<RequestOutput>>,
    done: bool,
    abort_tx: Option<Sender<Command>>,
}

impl RequestStream {
    fn note(&mut self, item: Option<Result<RequestOutput>>) -> Option<Result<RequestOutput>> {
        match &item {
            Some(Ok(o)) if o.finished => self.done = true,
            Some(Err(_)) | None => self.done = true,
            _ => {}
        }
        item
    }

    /// Next delta; `None` after the finished one was delivered (or the engine went away).
    pub async fn next(&mut self) -> Option<Result<RequestOutput>> {
        if self.done {
            return None;
        }
        let item = self.rx.recv().await;
        self.note(item)
    }

    pub fn blocking_next(&mut self) -> Option<Result<RequestOutput>> {
        if self.done {
            return None;
        }
        let item = self.rx.blocking_recv();
        self.note(item)
    }

    pub fn abort(&self) {
        if let Some(tx) = &self.abort_tx {
            let _ = tx.send(Command::Abort(self.request_id.clone()));
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}
