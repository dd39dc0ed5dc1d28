//! Reads the parts of an HF `tokenizer_config.json` the engine needs: the chat template, the BOS/EOS token
//! strings and the add-BOS/EOS flags. Field shapes follow transformers: `chat_template` is a string or a list of
//! `{name, template}` (we take "default"), a special token is a string or an `AddedToken` object `{content, ...}`.
//! Newer checkpoints keep the template in a sibling `chat_template.jinja`, used when the config has none.

use std::path::Path;

use serde_json::Value;

use crate::error::{EngineError, Result};

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HfTokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        context: format!("reading {}", path.display()),
        source,
    })
}

/// Loads `tokenizer_config.json` (if given) and, when it has no template, `chat_template.jinja` beside it or
/// beside `tokenizer.json`.
pub(crate) fn load_hf_tokenizer_config(config_path: Option<&Path>, tokenizer_json: &Path) -> Result<HfTokenizerConfig> {
    let mut config = match config_path {
        Some(path) => parse_tokenizer_config(&read_to_string(path)?)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?,
        None => HfTokenizerConfig::default(),
    };
    if config.chat_template.is_none() {
        let dirs = config_path
            .and_then(Path::parent)
            .into_iter()
            .chain(tokenizer_json.parent());
        for dir in dirs {
            let candidate = dir.join("chat_template.jinja");
            if candidate.is_file() {
                config.chat_template = Some(read_to_string(&candidate)?);
                break;
            }
        }
    }
    Ok(config)
}

pub(crate) fn parse_tokenizer_config(text: &str) -> std::result::Result<HfTokenizerConfig, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = json.as_object().ok_or("expected a JSON object")?;
    let chat_template = match object.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(named)) => {
            let find = |wanted: &str| {
                named.iter().find_map(|entry| {
                    (entry.get("name")?.as_str()? == wanted)
                        .then(|| entry.get("template")?.as_str().map(String::from))?
                })
            };
            Some(find("default").ok_or("chat_template list has no entry named \"default\"")?)
        }
        Some(other) => return Err(format!("chat_template must be a string or a list, got {other}")),
    };
    let token = |key: &str| -> std::result::Result<Option<String>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(added)) => match added.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(format!("{key} object has no string \"content\"")),
            },
            Some(other) => Err(format!(
                "{key} must be a string or an object with \"content\", got {other}"
            )),
        }
    };
    let flag = |key: &str| object.get(key).and_then(Value::as_bool);
    Ok(HfTokenizerConfig {
        chat_template,
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        add_bos_token: flag("add_bos_token"),
        add_eos_token: flag("add_eos_token"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_string_and_object_tokens_and_named_templates() {
        let config = parse_tokenizer_config(
            r#"{"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "add_bos_token": true,
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(config.bos_token.as_deref(), Some("<s>"));
        assert_eq!(config.eos_token.as_deref(), Some("</s>"));
        assert_eq!(config.add_bos_token, Some(true));
        assert_eq!(config.add_eos_token, None);
        assert_eq!(config.chat_template.as_deref(), Some("D"));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(parse_tokenizer_config("[1]").is_err());
        assert!(parse_tokenizer_config(r#"{"chat_template": 3}"#)
            .unwrap_err()
            .contains("chat_template"));
        assert!(
            parse_tokenizer_config(r#"{"chat_template": [{"name": "x", "template": "y"}]}"#)
                .unwrap_err()
                .contains("default")
        );
        assert!(parse_tokenizer_config(r#"{"eos_token": {"lstrip": true}}"#)
            .unwrap_err()
            .contains("eos_token"));
    }

    #[test]
    fn falls_back_to_chat_template_jinja() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<e>"}"#).unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), "{{ messages }}").unwrap();
        let config = load_hf_tokenizer_config(
            Some(&dir.path().join("tokenizer_config.json")),
            &dir.path().join("tokenizer.json"),
        )
        .unwrap();
        assert_eq!(config.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(config.eos_token.as_deref(), Some("<e>"));
    }
}
