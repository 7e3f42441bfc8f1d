"""Hugging Face models (tiny configs, random weights) through the PyTorch frontend.

Runs only where ``transformers`` is installed (it is not a CI dependency)."""
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
from torch.export import Dim  # noqa: E402

import graphopt  # noqa: E402

# float32 through a few layers of attention and layer norm: reassociated sums differ from
# torch's kernels by a few ulps per op, so whole-model outputs get 1e-4 (DESIGN.md tolerances)
RTOL = ATOL = 1e-4


class LastHidden(torch.nn.Module):
    """The model's first output (last hidden state), without a KV cache."""

    def __init__(self, model, **call_kwargs):
        super().__init__()
        self.model = model
        self.call_kwargs = call_kwargs

    def forward(self, *inputs):
        return self.model(*inputs, return_dict=False, **self.call_kwargs)[0]


def _bert():
    cfg = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return LastHidden(tf.BertModel(cfg))


def _gpt2():
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return LastHidden(tf.GPT2Model(cfg), use_cache=False)


def _vit():
    cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64)
    return LastHidden(tf.ViTModel(cfg))


def _text_inputs(batch, seq, with_mask):
    g = torch.Generator().manual_seed(batch * 100 + seq)
    ids = torch.randint(0, 100, (batch, seq), generator=g)
    if not with_mask:
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq - 2:] = 0  # padding on the first sequence
    return ids, mask


def _compare(compiled, module, inputs):
    (got,) = compiled(*inputs)
    with torch.no_grad():
        want = module(*inputs)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make,with_mask", [(_bert, True), (_gpt2, False)], ids=["bert", "gpt2"])
def test_text_model_with_dynamic_batch_and_sequence(make, with_mask):
    torch.manual_seed(0)
    module = make().eval()
    inputs = _text_inputs(2, 7, with_mask)
    dims = {0: Dim("batch"), 1: Dim("seq", min=2, max=64)}
    compiled = graphopt.compile(module, example_inputs=inputs, dynamic_shapes={"inputs": tuple(dims for _ in inputs)})
    assert compiled.graph.inputs[0].type.shape == ("batch", "seq")
    for batch, seq in ((2, 7), (3, 11)):
        _compare(compiled, module, _text_inputs(batch, seq, with_mask))


def test_vit():
    torch.manual_seed(0)
    module = _vit().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    compiled = graphopt.compile(module, example_inputs=(x,))
    _compare(compiled, module, (x,))


def test_model_output_and_kv_cache_outputs_compile():
    """GPT2Model as it is: a ModelOutput holding the last hidden state and a DynamicCache. The
    outputs are flattened as torch.export gives them and named after the structure."""
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = tf.GPT2Model(cfg).eval()
    ids, = _text_inputs(2, 5, with_mask=False)
    cm = graphopt.compile(model, example_inputs=(ids,))
    assert cm.output_names == ["last_hidden_state", "cache.layers.0.keys", "cache.layers.0.values",
                               "cache.layers.1.keys", "cache.layers.1.values"]
    with torch.no_grad():
        want = model(ids)
    got = cm(ids)
    torch.testing.assert_close(got[0], want.last_hidden_state, rtol=RTOL, atol=ATOL)
    for i, layer in enumerate(want.past_key_values.layers):
        torch.testing.assert_close(got[1 + 2 * i], layer.keys, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(got[2 + 2 * i], layer.values, rtol=RTOL, atol=ATOL)
