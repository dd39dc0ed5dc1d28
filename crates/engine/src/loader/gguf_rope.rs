//! RoPE scaling of a GGUF file as a `RopeScaling`. Phi-3's LongRoPE is stored explicitly (`longrope` below: the
//! converter's `rope_factors_long/short` tensors); the rest of this module recovers Llama 3.1 scaling.
//!
//! Linear scaling is explicit metadata (`{arch}.rope.scaling.type = "linear"` + `.factor`). Llama 3.1-style
//! scaling is not: llama.cpp's converter (`LlamaModel.generate_extra_tensors`) bakes it into a `rope_freqs.weight`
//! tensor of per-frequency divisors `ff[i]` (1 for high frequencies, `factor` for low ones, and
//! `1 / ((1 - s) / factor + s)` in between, with `s = (orig_ctx / wavelen - low) / (high - low)`). We recover
//! the parameters from that tensor: `factor = max(ff)`, and `s` is linear in `1 / wavelen`, so two or more
//! in-between points give `orig_ctx / (high - low)` and `low / (high - low)`, which is all the formula depends
//! on. The recovered parameters are checked by recomputing every `ff[i]`.

use pagedllm_kernels::GgmlType;

use crate::error::{EngineError, Result};
use crate::model::RopeScaling;

use super::gguf_file::{GgufFile, GgufValue};

/// Llama 3.1's published values, used when the tensor has too few in-between points to fit them.
const DEFAULT_LOW_FREQ_FACTOR: f32 = 1.0;
const DEFAULT_HIGH_FREQ_FACTOR: f32 = 4.0;
const DEFAULT_ORIGINAL_CONTEXT: usize = 8192;

pub fn rope_scaling(file: &GgufFile, arch: &str, head_dim: usize, theta: f32) -> Result<RopeScaling> {
    let err = |m: String| EngineError::load(file.path.display(), m);
    let key = |s: &str| format!("{arch}.rope.scaling.{s}");
    let num = |s: &str| file.get(&key(s)).and_then(GgufValue::as_f64);
    let orig_ctx = num("original_context_length").map(|v| v as usize);
    let kind = file.get(&key("type")).and_then(GgufValue::as_str).unwrap_or("none");
    match kind {
        "none" => {}
        "linear" => {
            let factor = num("factor").ok_or_else(|| err(format!("`{}` is linear but has no factor", key("type"))))?;
            return Ok(if factor == 1.0 {
                RopeScaling::None
            } else {
                RopeScaling::Linear { factor: factor as f32 }
            });
        }
        "llama3" => {
            return Ok(RopeScaling::Llama3 {
                factor: num("factor").ok_or_else(|| err(format!("`{}` is llama3 but has no factor", key("type"))))?
                    as f32,
                low_freq_factor: num("low_freq_factor").map_or(DEFAULT_LOW_FREQ_FACTOR, |v| v as f32),
                high_freq_factor: num("high_freq_factor").map_or(DEFAULT_HIGH_FREQ_FACTOR, |v| v as f32),
                original_max_position_embeddings: orig_ctx.unwrap_or(DEFAULT_ORIGINAL_CONTEXT),
            })
        }
        other => {
            return Err(err(format!(
                "RoPE scaling type `{other}` is not supported (supported: none, linear, llama3)"
            )))
        }
    }
    let Some(info) = file.tensor_info("rope_freqs.weight") else {
        return Ok(RopeScaling::None);
    };
    if info.dtype != GgmlType::F32 || info.dims.iter().product::<u64>() as usize != head_dim / 2 {
        return Err(err(format!(
            "rope_freqs.weight should be F32 with {} values, found {:?} {:?}",
            head_dim / 2,
            info.dtype,
            info.dims
        )));
    }
    let ff: Vec<f32> = file
        .tensor_bytes(info)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    infer_llama3(&ff, head_dim, theta, orig_ctx.unwrap_or(DEFAULT_ORIGINAL_CONTEXT)).map_err(err)
}

/// Phi-3's LongRoPE, as llama.cpp's converter (`Phi3MiniModel.generate_extra_tensors`) stores it: the factor
/// lists as `rope_factors_long.weight` / `rope_factors_short.weight` (F32, `rotary_dim / 2` each), the original
/// context as `rope.scaling.original_context_length` and the attention factor as `rope.scaling.attn_factor`
/// (HF's default formula when absent). `None` when the file has no factor tensors.
pub fn longrope(file: &GgufFile, arch: &str, rotary_dim: usize, max_position_embeddings: usize) -> Result<Option<RopeScaling>> {
    let err = |m: String| EngineError::load(file.path.display(), m);
    let (Some(long), Some(short)) = (
        file.tensor_info("rope_factors_long.weight"),
        file.tensor_info("rope_factors_short.weight"),
    ) else {
        return Ok(None);
    };
    let read = |info: &super::gguf_file::GgufTensorInfo| -> Result<Vec<f32>> {
        if info.dtype != GgmlType::F32 || info.dims.iter().product::<u64>() as usize != rotary_dim / 2 {
            return Err(err(format!(
                "`{}` should be F32 with {} values (rotary dim {rotary_dim} / 2), found {:?} {:?}",
                info.name,
                rotary_dim / 2,
                info.dtype,
                info.dims
            )));
        }
        Ok(file
            .tensor_bytes(info)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let key = |s: &str| format!("{arch}.rope.scaling.{s}");
    let original = file
        .get(&key("original_context_length"))
        .and_then(GgufValue::as_u64)
        .ok_or_else(|| err(format!("LongRoPE factor tensors without `{}`", key("original_context_length"))))?
        as usize;
    if original < 2 {
        return Err(err(format!("`{}` is {original}", key("original_context_length"))));
    }
    let scale = max_position_embeddings as f64 / original as f64;
    let attention_factor = match file.get(&key("attn_factor")).and_then(GgufValue::as_f64) {
        Some(a) => a as f32,
        None if scale <= 1.0 => 1.0,
        None => (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32,
    };
    Ok(Some(RopeScaling::LongRope {
        short_factor: read(short)?,
        long_factor: read(long)?,
        original_max_position_embeddings: original,
        attention_factor,
        use_long: max_position_embeddings > original,
    }))
}

fn wavelen(i: usize, head_dim: usize, theta: f32) -> f64 {
    let inv_freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
    2.0 * std::f64::consts::PI / inv_freq
}

/// The converter's per-frequency divisors for the given parameters.
pub fn llama3_freq_factors(head_dim: usize, theta: f32, factor: f32, low: f32, high: f32, orig: usize) -> Vec<f32> {
    let (factor, low, high, orig) = (factor as f64, low as f64, high as f64, orig as f64);
    (0..head_dim / 2)
        .map(|i| {
            let w = wavelen(i, head_dim, theta);
            if w < orig / high {
                1.0
            } else if w > orig / low {
                factor as f32
            } else {
                let s = (orig / w - low) / (high - low);
                (1.0 / ((1.0 - s) / factor + s)) as f32
            }
        })
        .collect()
}

fn infer_llama3(ff: &[f32], head_dim: usize, theta: f32, orig: usize) -> Result<RopeScaling, String> {
    if ff.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err("rope_freqs.weight holds non-positive or non-finite values".into());
    }
    let factor = ff.iter().copied().fold(1.0f32, f32::max);
    if factor <= 1.0 + 1e-6 {
        return Ok(RopeScaling::None);
    }
    // In-between points: (1 / wavelen, s) with s = (1/ff - 1/factor) / (1 - 1/factor).
    let inv_factor = 1.0 / factor as f64;
    let points: Vec<(f64, f64)> = ff
        .iter()
        .enumerate()
        .filter(|(_, &v)| v > 1.0 + 1e-4 && v < factor * (1.0 - 1e-4))
        .map(|(i, &v)| {
            (
                1.0 / wavelen(i, head_dim, theta),
                (1.0 / v as f64 - inv_factor) / (1.0 - inv_factor),
            )
        })
        .collect();
    let (low, high) = if points.len() >= 2 {
        // Least-squares line s = a * x + b.
        let n = points.len() as f64;
        let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / n, sy / n);
        let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let a = sxy / sxx;
        let b = my - a * mx;
        let span = orig as f64 / a;
        let low = -b * span;
        (low as f32, (low + span) as f32)
    } else {
        (DEFAULT_LOW_FREQ_FACTOR, DEFAULT_HIGH_FREQ_FACTOR)
    };
    let recomputed = llama3_freq_factors(head_dim, theta, factor, low, high, orig);
    let worst = ff
        .iter()
        .zip(&recomputed)
        .map(|(a, b)| ((a - b) / a).abs())
        .fold(0.0f32, f32::max);
    if !(low > 0.0 && high > low) || worst > 1e-3 {
        return Err(format!(
            "rope_freqs.weight does not follow Llama 3 RoPE scaling (best fit factor {factor}, low {low}, high {high}, \
             relative error {worst})"
        ));
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: orig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_llama31_parameters_from_freq_factors() {
        // Llama 3.1 8B / 3.2 1B values.
        for (factor, theta) in [(8.0f32, 500_000.0f32), (32.0, 500_000.0)] {
            let ff = llama3_freq_factors(128, theta, factor, 1.0, 4.0, 8192);
            match infer_llama3(&ff, 128, theta, 8192).unwrap() {
                RopeScaling::Llama3 {
                    factor: f,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                } => {
                    assert_eq!(f, factor);
                    assert!((low_freq_factor - 1.0).abs() < 1e-3, "{low_freq_factor}");
                    assert!((high_freq_factor - 4.0).abs() < 1e-3, "{high_freq_factor}");
                    assert_eq!(original_max_position_embeddings, 8192);
                }
                other => panic!("expected llama3 scaling, got {other:?}"),
            }
        }
    }

    #[test]
    fn unit_factors_mean_no_scaling_and_garbage_is_rejected() {
        assert_eq!(infer_llama3(&[1.0; 64], 128, 1e4, 8192).unwrap(), RopeScaling::None);
        let mut ff = llama3_freq_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192);
        ff.reverse();
        assert!(infer_llama3(&ff, 128, 500_000.0, 8192).is_err());
        assert!(infer_llama3(&[f32::NAN; 64], 128, 1e4, 8192).is_err());
    }
}
