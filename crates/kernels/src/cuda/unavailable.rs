//! The CUDA backend of a build without the `cuda` feature: the same API, every constructor refuses.

use super::{
    ActivationDtype, CudaError, CudaOptions, DecoderShape, DeviceSample, DeviceSampleParams, FetchWeight, KvPlan,
    TokenEdit,
};
use crate::InputBatch;

/// Uninhabited: no value can exist, so the methods below need no body.
pub enum CudaDecoder {}

impl CudaDecoder {
    pub fn load(_: &CudaOptions, _: &DecoderShape, _: &mut FetchWeight<'_>) -> Result<Self, CudaError> {
        Err(CudaError::Unavailable(
            "this build of pagedllm has no CUDA backend (rebuild with the `cuda` feature)".into(),
        ))
    }
    pub fn dtype(&self) -> ActivationDtype {
        match *self {}
    }
    pub fn device_name(&self) -> &str {
        match *self {}
    }
    pub fn kv_plan(&self) -> &KvPlan {
        match *self {}
    }
    pub fn num_kv_blocks(&self) -> usize {
        match *self {}
    }
    pub fn copy_blocks(&mut self, _: &[(u32, u32)]) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn forward(&mut self, _: &InputBatch) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn logits_to_host(&mut self, _: &mut Vec<f32>) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn sample(&mut self, _: &[DeviceSampleParams], _: &[TokenEdit]) -> Result<Vec<DeviceSample>, CudaError> {
        match *self {}
    }
    pub fn poison(&mut self, _: bool) -> Result<(), CudaError> {
        match *self {}
    }
}
