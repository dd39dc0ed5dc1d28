//! Phi-3 family configs as the Hub ships them (transformers < 5 layout: `rope_scaling` + a top-level
//! `original_max_position_embeddings`), through `parse_config`.

use super::*;

/// Phi-4-mini-instruct's shape: head_dim 128, partial_rotary_factor 0.75, LongRoPE 4096 -> 131072.
fn phi4_mini(rope_scaling: &str, partial: &str) -> String {
    format!(
        r#"{{"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
        "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "partial_rotary_factor": {partial}, "sliding_window": 262144,
        "rope_scaling": {rope_scaling}, "tie_word_embeddings": true, "vocab_size": 200064, "hidden_act": "silu",
        "bos_token_id": 199999, "eos_token_id": 199999}}"#
    )
}

fn factors(n: usize, base: f32) -> String {
    let v: Vec<String> = (0..n).map(|i| format!("{}", base + i as f32 * 0.5)).collect();
    format!("[{}]", v.join(", "))
}

#[test]
fn phi4_mini_partial_rotary_and_longrope() {
    let rs = format!(r#"{{"type": "longrope", "short_factor": {}, "long_factor": {}}}"#, factors(48, 1.0), factors(48, 2.0));
    let mut c = parse_config("x", &phi4_mini(&rs, "0.75")).unwrap();
    assert_eq!((c.architecture.as_str(), c.head_dim, c.rotary_dim()), ("phi3", 128, 96));
    assert_eq!(c.sliding_window, Some(262144));
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    let RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings,
        attention_factor,
        use_long,
    } = c.rope_scaling.clone()
    else {
        panic!("expected LongRoPE, got {:?}", c.rope_scaling)
    };
    assert_eq!((short_factor.len(), long_factor[1], original_max_position_embeddings), (48, 2.5, 4096));
    // HF: sqrt(1 + ln(131072 / 4096) / ln(4096)).
    let want = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt() as f32;
    assert!((attention_factor - want).abs() < 1e-7, "{attention_factor} vs {want}");
    assert_eq!(c.rope_attention_factor(), attention_factor);
    // The model's own context passes the original one: the long factors, as vLLM picks them...
    assert!(use_long);
    let long = c.rope_inv_freq();
    assert_eq!(long.len(), 48);
    // f32 frequencies: relative tolerance.
    let close = |got: f32, want: f64| ((got as f64 - want) / want).abs() < 1e-6;
    assert!(close(long[1], 1.0 / (2.5 * 10000f64.powf(2.0 / 96.0))), "{}", long[1]);
    // ... and an engine limited to the original context runs on the short ones.
    c.set_max_model_len(4096);
    let short = c.rope_inv_freq();
    assert!(close(short[1], 1.0 / (1.5 * 10000f64.powf(2.0 / 96.0))), "{}", short[1]);
    c.set_max_model_len(4097);
    assert_eq!(c.rope_inv_freq(), long);
}

#[test]
fn phi3_mini_4k_su_and_explicit_factors() {
    // Phi-3-mini-4k: no scaling, full rotary, window 2047.
    let text = r#"{"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096, "rope_scaling": null, "sliding_window": 2047,
        "vocab_size": 32064, "rms_norm_eps": 1e-5}"#;
    let c = parse_config("x", text).unwrap();
    assert_eq!((c.head_dim, c.rotary_dim(), c.num_key_value_heads), (96, 96, 32));
    assert_eq!((c.rope_scaling.clone(), c.sliding_window), (RopeScaling::None, Some(2047)));
    assert!(!c.tie_word_embeddings);
    // The older `su` name; explicit `factor` and `attention_factor` win over the derived ones (transformers 5).
    let rs = format!(
        r#"{{"type": "su", "short_factor": {}, "long_factor": {}, "attention_factor": 1.25}}"#,
        factors(64, 1.0),
        factors(64, 1.0)
    );
    let c = parse_config("x", &phi4_mini(&rs, "1.0")).unwrap();
    assert_eq!(c.rotary_dim(), 128);
    assert!(matches!(c.rope_scaling, RopeScaling::LongRope { attention_factor, .. } if attention_factor == 1.25));
}

#[test]
fn bad_phi3_rope_configs_are_named_errors() {
    // 64 factors for 48 rotary pairs.
    let rs = format!(r#"{{"type": "longrope", "short_factor": {}, "long_factor": {}}}"#, factors(64, 1.0), factors(64, 1.0));
    let e = parse_config("x", &phi4_mini(&rs, "0.75")).unwrap_err().to_string();
    assert!(e.contains("short_factor") && e.contains("48"), "{e}");
    let rs = r#"{"type": "longrope", "short_factor": [1.0]}"#;
    let e = parse_config("x", &phi4_mini(rs, "1.0")).unwrap_err().to_string();
    assert!(e.contains("short_factor"), "{e}");
    let e = parse_config("x", &phi4_mini("null", "0.29")).unwrap_err().to_string();
    assert!(e.contains("partial_rotary_factor") && e.contains("37"), "{e}");
    let e = parse_config("x", &phi4_mini("null", "1.5")).unwrap_err().to_string();
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let e = parse_config("x", &phi4_mini(r#"{"type": "yarn", "factor": 4.0}"#, "1.0")).unwrap_err().to_string();
    assert!(e.contains("yarn") && e.contains("longrope"), "{e}");
}
