import math

import pytest
import torch

from pagellm.errors import ClientError
from pagellm.layers.rotary import RotaryEmbedding, check_rope_scaling
from pagellm.ops.rotary import apply_rotary, llama3_scale_inv_freq, rope_cos_sin_cache, rope_inv_freq


def reference_rotary(x, positions, base):
    """Rotate-half RoPE written out per position, in float64."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    out = torch.empty_like(x, dtype=torch.float64)
    for t, pos in enumerate(positions.tolist()):
        angle = pos * inv_freq                                        # [half]
        x1, x2 = x[t, :, :half].double(), x[t, :, half:].double()
        out[t, :, :half] = x1 * angle.cos() - x2 * angle.sin()
        out[t, :, half:] = x2 * angle.cos() + x1 * angle.sin()
    return out.to(x.dtype)


def test_apply_rotary_matches_reference_for_arbitrary_positions():
    torch.manual_seed(0)
    query, key = torch.randn(6, 4, 16), torch.randn(6, 2, 16)
    positions = torch.tensor([0, 1, 7, 100, 3, 255])
    cache = rope_cos_sin_cache(rope_inv_freq(16, 10000.0), 256)
    q_rot, k_rot = apply_rotary(query, key, positions, cache)
    torch.testing.assert_close(q_rot, reference_rotary(query, positions, 10000.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_rot, reference_rotary(key, positions, 10000.0), atol=1e-5, rtol=1e-5)


def test_position_zero_is_identity_and_norm_is_preserved():
    torch.manual_seed(0)
    query, key = torch.randn(2, 3, 8), torch.randn(2, 1, 8)
    cache = rope_cos_sin_cache(rope_inv_freq(8, 10000.0), 16)
    q_rot, _ = apply_rotary(query, key, torch.tensor([0, 9]), cache)
    torch.testing.assert_close(q_rot[0], query[0])
    torch.testing.assert_close(q_rot.norm(dim=-1), query.norm(dim=-1))


def test_llama3_scaling_bands():
    inv_freq = rope_inv_freq(128, 500000.0)
    scaled = llama3_scale_inv_freq(inv_freq, 8.0, 1.0, 4.0, 8192)
    wavelen = 2 * math.pi / inv_freq
    short = wavelen < 8192 / 4
    long = wavelen > 8192 / 1
    torch.testing.assert_close(scaled[short], inv_freq[short])
    torch.testing.assert_close(scaled[long], inv_freq[long] / 8)
    medium = ~short & ~long
    assert medium.any()
    assert torch.all(scaled[medium] <= inv_freq[medium])
    assert torch.all(scaled[medium] >= inv_freq[medium] / 8)


def test_rope_scaling_validation():
    assert check_rope_scaling(None) is None
    assert check_rope_scaling({"rope_type": "default", "rope_theta": 1e4}) is None
    with pytest.raises(ClientError, match="yarn"):
        check_rope_scaling({"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ClientError, match="lacks"):
        check_rope_scaling({"rope_type": "llama3", "factor": 8.0})


def test_rotary_module_built_on_meta_is_refilled_by_init_buffers():
    with torch.device("meta"):
        rotary = RotaryEmbedding(16, 64, 10000.0)
    rotary.to_empty(device="cpu")
    rotary.init_buffers()
    torch.testing.assert_close(rotary.cos_sin_cache, rope_cos_sin_cache(rope_inv_freq(16, 10000.0), 64))
