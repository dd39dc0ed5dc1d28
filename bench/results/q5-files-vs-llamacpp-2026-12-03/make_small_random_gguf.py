# A small random-weight Llama (hidden 512: K-quant rows need a multiple of 256) with SmolLM2's tokenizer, F16,
# for checking that our Q5_K / Q5_0 / Q5_1 decoders read llama-quantize's files as llama.cpp does.
import sys, numpy as np
sys.path.insert(0, '/root/.cache/pagedllm-peers/llamacpp-cpu/src/gguf-py')
import gguf
src = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], 'llama')
H, I, L, NH, NKV, V = 512, 1536, 4, 8, 4, 49152
w.add_name('random-small'); w.add_context_length(2048); w.add_embedding_length(H); w.add_block_count(L)
w.add_feed_forward_length(I); w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5); w.add_file_type(1); w.add_vocab_size(V); w.add_rope_dimension_count(H // NH)
for f in src.fields.values():
    if f.name.startswith('tokenizer.'):
        t = f.types
        w.add_key_value(f.name, f.contents(), t[0], t[-1] if t[0] == gguf.GGUFValueType.ARRAY else None)
rng = np.random.default_rng(0)
def mat(r, c, s): return (rng.standard_normal((r, c), dtype=np.float32) * s).astype(np.float16)
ones = np.ones(H, dtype=np.float32)
w.add_tensor('token_embd.weight', mat(V, H, 1.0))
for l in range(L):
    p = f'blk.{l}.'
    w.add_tensor(p + 'attn_norm.weight', ones); w.add_tensor(p + 'ffn_norm.weight', ones)
    w.add_tensor(p + 'attn_q.weight', mat(H, H, 0.08)); w.add_tensor(p + 'attn_k.weight', mat(NKV * 64, H, 0.08))
    w.add_tensor(p + 'attn_v.weight', mat(NKV * 64, H, 0.05)); w.add_tensor(p + 'attn_output.weight', mat(H, H, 0.05))
    w.add_tensor(p + 'ffn_gate.weight', mat(I, H, 0.05)); w.add_tensor(p + 'ffn_up.weight', mat(I, H, 0.05))
    w.add_tensor(p + 'ffn_down.weight', mat(H, I, 0.03))
w.add_tensor('output_norm.weight', ones); w.add_tensor('output.weight', mat(V, H, 0.2))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(progress=False); w.close()
