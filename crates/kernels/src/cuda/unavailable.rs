//! The CUDA backend of a build without the `cuda` feature: the same API, the constructor refuses.

use super::{ActivationDtype, CudaError, CudaOptions, DeviceSample, DeviceSampleParams, KvPlan, ModelShape, TokenEdit};
use crate::backend::{
    Activation, AttentionSpec, Backend, ExpertsId, Forward, MoeSpec, MoeWeights, HeadLayout, Norm, QkNorm, RopeId, RopeSpec, Rows, TensorId, VectorId,
    WeightId,
};
use crate::tensor::WeightMatrix;
use crate::InputBatch;

/// Uninhabited: no value can exist, so the methods below need no body.
pub enum CudaBackend {}

impl CudaBackend {
    pub fn new(_: &CudaOptions, _: &ModelShape) -> Result<Self, CudaError> {
        Err(CudaError::Unavailable(
            "this build of pagedllm has no CUDA backend (rebuild with the `cuda` feature)".into(),
        ))
    }
    pub fn finish_load(&mut self, _: &mut Forward<'_, Self>) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn startup_phases(&self) -> &[(&'static str, f64)] {
        match *self {}
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
    pub fn sample(
        &mut self,
        _: &[DeviceSampleParams],
        _: &[u32],
        _: &[TokenEdit],
        _: &[u32],
    ) -> Result<Vec<DeviceSample>, CudaError> {
        match *self {}
    }
    pub fn copy_logits_rows_to_host(&mut self, _: usize, _: &mut Vec<f32>) -> Result<(), CudaError> {
        match *self {}
    }
    pub fn poison(&mut self, _: bool) -> Result<(), CudaError> {
        match *self {}
    }
}

impl Backend for CudaBackend {
    type Error = CudaError;
    fn upload_matrix(&mut self, _: &[&WeightMatrix]) -> Result<WeightId, CudaError> {
        match *self {}
    }
    fn upload_vector(&mut self, _: &[&[f32]]) -> Result<VectorId, CudaError> {
        match *self {}
    }
    fn upload_rope(&mut self, _: &RopeSpec) -> Result<RopeId, CudaError> {
        match *self {}
    }
    fn upload_experts(&mut self, _: &[Vec<&WeightMatrix>]) -> Result<ExpertsId, CudaError> {
        match *self {}
    }
    fn alloc_activation(&mut self, _: Rows, _: usize) -> Result<TensorId, CudaError> {
        match *self {}
    }
    fn embed(&mut self, _: WeightId, _: Option<f32>, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn add_rms_norm(&mut self, _: TensorId, _: Option<TensorId>, _: VectorId, _: Norm, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn linear(&mut self, _: TensorId, _: WeightId, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn rope_kv_write(
        &mut self,
        _: usize,
        _: TensorId,
        _: HeadLayout,
        _: Option<VectorId>,
        _: Option<QkNorm>,
        _: RopeId,
    ) -> Result<(), CudaError> {
        match *self {}
    }
    fn attention(&mut self, _: usize, _: TensorId, _: HeadLayout, _: AttentionSpec, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn glu(&mut self, _: TensorId, _: Activation, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn moe(&mut self, _: TensorId, _: &MoeWeights, _: MoeSpec, _: Option<TensorId>, _: TensorId) -> Result<(), CudaError> {
        match *self {}
    }
    fn lm_head(&mut self, _: TensorId, _: WeightId, _: Option<f32>) -> Result<(), CudaError> {
        match *self {}
    }
    fn copy_blocks(&mut self, _: &[(u32, u32)]) -> Result<(), CudaError> {
        match *self {}
    }
    fn run_step(&mut self, _: &mut InputBatch, _: &mut Forward<'_, Self>) -> Result<(), CudaError> {
        match *self {}
    }
    fn logits_to_host(&mut self, _: &mut Vec<f32>) -> Result<(), CudaError> {
        match *self {}
    }
}
