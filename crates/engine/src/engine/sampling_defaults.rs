//! Request sampling parameters resolved the way vLLM does: its `SamplingParams` defaults, overlaid with the
//! model's generation defaults (`generation_config.json` / GGUF `general.sampling.*`), overlaid with the fields
//! the caller set. Lives apart from the handle so the rule is one small, tested function.

use crate::error::{EngineError, Result};

/// vLLM's `SamplingParams` defaults, overlaid with the model's generation defaults, overlaid with `user` (a JSON
/// object of snake_case fields; `null` values count as unset, except `max_tokens` / `seed` where null means none).
pub fn resolve_sampling_params(
    defaults: &crate::loader::GenerationDefaults,
    user: &serde_json::Value,
) -> Result<crate::SamplingParams> {
    let mut base = serde_json::to_value(crate::SamplingParams::default()).expect("params serialize");
    let obj = base.as_object_mut().expect("object");
    let model_defaults = [
        ("temperature", defaults.temperature.map(serde_json::Value::from)),
        ("top_p", defaults.top_p.map(serde_json::Value::from)),
        ("top_k", defaults.top_k.map(serde_json::Value::from)),
        (
            "repetition_penalty",
            defaults.repetition_penalty.map(serde_json::Value::from),
        ),
    ];
    for (k, v) in model_defaults {
        if let Some(v) = v {
            obj.insert(k.into(), v);
        }
    }
    match user {
        serde_json::Value::Object(u) => {
            for (k, v) in u {
                if !v.is_null() || k == "max_tokens" || k == "seed" {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::Value::Null => {}
        _ => return Err(EngineError::invalid("sampling_params", "must be an object")),
    }
    serde_json::from_value(base).map_err(|e| EngineError::invalid("sampling_params", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::GenerationDefaults;

    #[test]
    fn model_defaults_apply_unless_the_request_sets_the_field() {
        let d = GenerationDefaults {
            temperature: Some(0.6),
            top_p: Some(0.9),
            ..Default::default()
        };
        let p = resolve_sampling_params(&d, &serde_json::json!({ "top_p": 0.5, "max_tokens": 7 })).unwrap();
        assert_eq!((p.temperature, p.top_p, p.max_tokens), (0.6, 0.5, Some(7)));
        let p = resolve_sampling_params(&d, &serde_json::json!({ "max_tokens": null })).unwrap();
        assert_eq!(p.max_tokens, None);
        let p = resolve_sampling_params(&GenerationDefaults::default(), &serde_json::Value::Null).unwrap();
        assert_eq!(p, crate::SamplingParams::default());
        assert!(resolve_sampling_params(&d, &serde_json::json!({ "temperature": "hot" })).is_err());
    }
}
