//! Chat templates: HF-style Jinja templates rendered with minijinja, configured like transformers'
//! `apply_chat_template` environment (`trim_blocks=True`, `lstrip_blocks=True`, no trailing newline kept, Python
//! string/dict methods via `minijinja_contrib::pycompat`, `raise_exception`, Python-compatible `tojson`,
//! `strftime_now`, booleans/none printed as Python does). The template is compiled once in `new`; `render` is cheap and thread-safe.
//!
//! Message content given as OpenAI content parts (`[{"type": "text", "text": ...}]`) is flattened to one string
//! (parts joined with "\n", as vLLM does for "string"-format templates) unless the template itself iterates over a
//! message's content (a `{% for ... in ...content... %}` tag), in which case the list is passed through unchanged.
//! Flattening rejects non-text parts: the engine serves text-only models.
//!
//! Templates may come from clients (the server refuses them unless trusted, but the TS API takes any), so every
//! render is bounded: `RENDER_FUEL` minijinja instructions (its `fuel` feature: a deep loop ends with an error
//! instead of spinning), at most `MAX_RENDER_BYTES` of output, and `tojson` capped in indent and size. Memory a
//! template builds in variables (e.g. doubling a string in a loop) is bounded only by the fuel; that is why the
//! server runs request templates only when told to trust them.

use minijinja::Environment;
use serde_json::{Map, Value};

use super::template_functions::{raise_exception, strftime_now, tojson, BoundedBuffer, MAX_RENDER_BYTES};
use crate::error::{EngineError, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// minijinja instructions one render may execute: real templates use a few hundred per message, so this leaves
/// room for thousands of messages and stops a runaway loop within a fraction of a second.
pub const RENDER_FUEL: u64 = 5_000_000;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    iterates_content: bool,
}

fn template_err(err: minijinja::Error) -> EngineError {
    // The alternate form adds the failing template line, which is what makes template bugs findable.
    let mut message = err.to_string();
    if let Some(detail) = err.detail() {
        if !message.contains(detail) {
            message = format!("{message}: {detail}");
        }
    }
    EngineError::ChatTemplate(message)
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_formatter(python_formatter);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(template_err)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            iterates_content: iterates_over_content(source),
        })
    }

    /// Renders `messages` (an array of `{role, content, ...}`). `extra` (an object) adds template variables such as
    /// `tools` or `documents`; it cannot replace `messages` or `add_generation_prompt`.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool, extra: Option<&Value>) -> Result<String> {
        let messages = messages
            .as_array()
            .ok_or_else(|| EngineError::ChatTemplate("messages must be an array".into()))?
            .iter()
            .map(|message| self.prepare_message(message))
            .collect::<Result<Vec<_>>>()?;
        let mut context = Map::new();
        match extra {
            None | Some(Value::Null) => {}
            Some(Value::Object(vars)) => context.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone()))),
            Some(other) => {
                return Err(EngineError::ChatTemplate(format!(
                    "extra template variables must be an object, got {other}"
                )))
            }
        }
        for (key, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(token) = token {
                context.entry(key).or_insert_with(|| Value::String(token.clone()));
            }
        }
        context.insert("messages".into(), Value::Array(messages));
        context.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_err)?;
        let mut out = BoundedBuffer::new(MAX_RENDER_BYTES);
        match template.render_captured_to(minijinja::Value::from_serialize(&context), &mut out) {
            Ok(_) => {}
            Err(_) if out.exceeded => {
                return Err(EngineError::ChatTemplate(format!(
                    "the rendered prompt exceeds {MAX_RENDER_BYTES} bytes"
                )))
            }
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                return Err(EngineError::ChatTemplate(format!(
                    "the chat template ran out of fuel ({RENDER_FUEL} instructions): it does too much work"
                )))
            }
            Err(e) => return Err(template_err(e)),
        }
        String::from_utf8(out.bytes).map_err(|e| EngineError::ChatTemplate(format!("rendered invalid UTF-8: {e}")))
    }

    fn prepare_message(&self, message: &Value) -> Result<Value> {
        let object = message
            .as_object()
            .ok_or_else(|| EngineError::ChatTemplate(format!("each message must be an object, got {message}")))?;
        match object.get("content") {
            Some(Value::Array(parts)) if !self.iterates_content => {
                let mut flat = object.clone();
                flat.insert("content".into(), Value::String(flatten_text_parts(parts)?));
                Ok(Value::Object(flat))
            }
            _ => Ok(message.clone()),
        }
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("iterates_content", &self.iterates_content)
            .finish_non_exhaustive()
    }
}

/// Prints booleans and none as Python's `str()` does ("True", "None"), as Jinja2 renders them for HF.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &minijinja::Value,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let python = match value.kind() {
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }),
        ValueKind::None => Some("None"),
        _ => None,
    };
    match python {
        Some(text) => out.write_str(text).map_err(minijinja::Error::from),
        None => minijinja::escape_formatter(out, state, value),
    }
}

fn flatten_text_parts(parts: &[Value]) -> Result<String> {
    let texts = parts
        .iter()
        .map(|part| match part {
            Value::String(text) => Ok(text.as_str()),
            Value::Object(fields) => match (fields.get("type").and_then(Value::as_str), fields.get("text")) {
                (Some("text") | None, Some(Value::String(text))) => Ok(text.as_str()),
                (Some(kind), _) if kind != "text" => Err(EngineError::ChatTemplate(format!(
                    "content part type {kind:?} is not supported (text-only model)"
                ))),
                _ => Err(EngineError::ChatTemplate(format!(
                    "text content part has no string \"text\": {part}"
                ))),
            },
            other => Err(EngineError::ChatTemplate(format!(
                "content part must be an object, got {other}"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(texts.join("\n"))
}

/// Whether any `{% for X in EXPR %}` tag iterates over an expression mentioning `content` (vLLM's heuristic for
/// templates that want OpenAI-style content-part lists).
fn iterates_over_content(source: &str) -> bool {
    source
        .split("{%")
        .skip(1)
        .filter_map(|rest| rest.split("%}").next())
        .any(|tag| {
            let tag = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
            tag.strip_prefix("for ")
                .and_then(|rest| rest.split_once(" in "))
                .is_some_and(|(_, iterable)| iterable.contains("content"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: Value) -> Result<String> {
        ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into()))?.render(&messages, false, None)
    }

    #[test]
    fn raise_exception_becomes_a_chat_template_error() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let err = render(source, json!([{"role": "system", "content": "x"}])).unwrap_err();
        assert!(
            matches!(&err, EngineError::ChatTemplate(m) if m.contains("Conversation must start with user")),
            "{err}"
        );
        assert_eq!(render(source, json!([{"role": "user", "content": "x"}])).unwrap(), "ok");
    }

    /// Gemma 2's template (google/gemma-2-*-it `tokenizer_config.json`): no system role, `model` for the
    /// assistant, `| trim` on the content.
    const GEMMA2_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

    /// Gemma 3's template (google/gemma-3-*-it): a system message becomes a prefix of the first user turn.
    const GEMMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

    #[test]
    fn gemma_templates_render_and_refuse_what_hf_refuses() {
        let t = ChatTemplate::new(GEMMA2_TEMPLATE, Some("<bos>".into()), Some("<eos>".into())).unwrap();
        let chat = json!([
            {"role": "user", "content": " Hi \n"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"}
        ]);
        assert_eq!(
            t.render(&chat, true, None).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\n"
        );
        // Gemma 2 has no system role: the template's own error, as a chat-template error (HTTP 400).
        let err = t
            .render(&json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]), true, None)
            .unwrap_err();
        assert!(matches!(&err, EngineError::ChatTemplate(m) if m.contains("System role not supported")), "{err}");

        let t = ChatTemplate::new(GEMMA3_TEMPLATE, Some("<bos>".into()), Some("<eos>".into())).unwrap();
        let chat = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}]}
        ]);
        assert_eq!(
            t.render(&chat, true, None).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        let err = t
            .render(&json!([{"role": "assistant", "content": "x"}]), false, None)
            .unwrap_err();
        assert!(matches!(&err, EngineError::ChatTemplate(m) if m.contains("must alternate")), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_construction() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(matches!(err, EngineError::ChatTemplate(_)), "{err}");
    }

    #[test]
    fn pycompat_methods_work() {
        let source = "{% for m in messages %}[{{ m['content'].strip() }}|{{ m.role.upper() }}|{{ m.content.startswith(' hi') }}|{{ m['content'].split()|length }}|{{ m.name }}{{ none }}]{% endfor %}\
            {% for k, v in messages[0].items() %}{{ k }}={{ v.strip() }};{% endfor %}{{ bos_token }}{{ eos_token }}";
        let out = render(source, json!([{"role": "user", "content": " hi there \n"}])).unwrap();
        assert_eq!(out, "[hi there|USER|True|2|None]content=hi there;role=user;<s></s>");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hf() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(
            render(
                source,
                json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
            )
            .unwrap(),
            "U:a\nU:b\n"
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let source = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': '<é>'} | tojson(sort_keys=true, ensure_ascii=true) }}";
        let template = ChatTemplate::new(source, None, None).unwrap();
        let tools = json!({"tools": [{"name": "f<x>", "args": [1, 2.5, null, true], "empty": {}}]});
        let out = template.render(&json!([]), false, Some(&tools)).unwrap();
        assert_eq!(
            out,
            "[{\"args\": [1, 2.5, null, true], \"empty\": {}, \"name\": \"f<x>\"}]|{\n  \"args\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"empty\": {},\n  \"name\": \"f<x>\"\n}|{\"a\": \"<\\u00e9>\", \"b\": 1}"
        );
    }

    #[test]
    fn content_parts_are_flattened_unless_the_template_iterates_them() {
        let parts =
            json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
        assert_eq!(render("{{ messages[0].content }}", parts.clone()).unwrap(), "a\nb");
        let iterating = "{% for p in messages[0]['content'] %}<{{ p.text }}>{% endfor %}";
        assert_eq!(render(iterating, parts).unwrap(), "<a><b>");
        let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
        assert!(render("{{ messages[0].content }}", image)
            .unwrap_err()
            .to_string()
            .contains("image_url"));
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let messages = json!([{"role": "user", "content": "x"}]);
        // A deep loop: stopped by fuel, with a clear error.
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let started = std::time::Instant::now();
        let err = render(looping, messages.clone()).unwrap_err().to_string();
        assert!(err.contains("out of fuel"), "{err}");
        assert!(started.elapsed().as_secs() < 10, "fuel stops the loop quickly");
        // A huge indent: refused before anything is allocated.
        let err = render("{{ messages | tojson(indent=1000000000) }}", messages.clone()).unwrap_err().to_string();
        assert!(err.contains("indent is limited"), "{err}");
        // Output growing past the cap: refused.
        let big = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
        let err = render(big, messages.clone()).unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
        // Ordinary templates are unaffected.
        assert_eq!(render("{{ messages | tojson(indent=2) | length }}", messages).unwrap(), "50");
    }

    #[test]
    fn extra_variables_and_strftime_are_available() {
        let template = ChatTemplate::new("{{ custom }}/{{ strftime_now('%Y') | length }}", None, None).unwrap();
        assert_eq!(
            template
                .render(&json!([]), true, Some(&json!({"custom": "v"})))
                .unwrap(),
            "v/4"
        );
        assert!(template.render(&json!({"not": "an array"}), true, None).is_err());
    }
}
