# An 8B-class (Llama-3-8B shape, SmolLM2's tokenizer) random-weight F16 GGUF for speed measurements only.
import sys, numpy as np
sys.path.insert(0, '/root/.cache/pagedllm-peers/llamacpp-cpu/src/gguf-py')
import gguf
src = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], 'llama')
H, I, L, NH, NKV, V = 4096, 14336, 32, 32, 8, 49152
w.add_name('random-8b-shape'); w.add_context_length(8192); w.add_embedding_length(H); w.add_block_count(L)
w.add_feed_forward_length(I); w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(500000.0)
w.add_layer_norm_rms_eps(1e-5); w.add_file_type(1); w.add_vocab_size(V); w.add_rope_dimension_count(H // NH)
for f in src.fields.values():
    if f.name.startswith('tokenizer.'):
        t = f.types
        w.add_key_value(f.name, f.contents(), t[0], t[-1] if t[0] == gguf.GGUFValueType.ARRAY else None)
rng = np.random.default_rng(0)
base = (rng.standard_normal(I * H, dtype=np.float32) * 0.02).astype(np.float16)
def mat(r, c): return base[: r * c].reshape(r, c) if r * c <= base.size else np.tile(base, (r * c) // base.size + 1)[: r * c].reshape(r, c)
ones = np.ones(H, dtype=np.float32)
w.add_tensor('token_embd.weight', mat(V, H))
for l in range(L):
    p = f'blk.{l}.'
    w.add_tensor(p + 'attn_norm.weight', ones); w.add_tensor(p + 'ffn_norm.weight', ones)
    w.add_tensor(p + 'attn_q.weight', mat(H, H)); w.add_tensor(p + 'attn_k.weight', mat(NKV * 128, H))
    w.add_tensor(p + 'attn_v.weight', mat(NKV * 128, H)); w.add_tensor(p + 'attn_output.weight', mat(H, H))
    w.add_tensor(p + 'ffn_gate.weight', mat(I, H)); w.add_tensor(p + 'ffn_up.weight', mat(I, H))
    w.add_tensor(p + 'ffn_down.weight', mat(H, I))
w.add_tensor('output_norm.weight', ones); w.add_tensor('output.weight', mat(V, H))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(progress=False); w.close()
