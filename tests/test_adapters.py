"""Adapters against independent computations on tiny random BERT, GPT-2 and Llama models."""
import torch

from llm_anatomy.batching import pad


def test_value_vectors_are_the_ffn_output_of_a_one_hot_neuron(tiny_model):
    """Row j of value_vectors(l) must be what the output projection adds for neuron j alone."""
    adapter = tiny_model.adapter
    for layer in range(adapter.num_layers):
        out = adapter.ffn(layer).output
        width = adapter.ffn_width(layer)
        with torch.no_grad():
            basis = torch.eye(width)
            expected = out(basis) - out(torch.zeros(1, width))  # [neurons, hidden]
        assert torch.allclose(adapter.value_vectors(layer), expected, atol=1e-6)
        assert adapter.value_vectors(layer).shape == (width, adapter.hidden_size)


def _layer_outputs_by_hooks(model, ids, mask):
    """Hidden states collected with forward hooks: embeddings output, then every layer's output."""
    adapter = model.adapter
    captured = []
    hooks = [adapter.layers()[0].register_forward_pre_hook(
        lambda m, args, kwargs: captured.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True)]
    for layer in adapter.layers():
        hooks.append(layer.register_forward_hook(
            lambda m, args, out: captured.append(out[0] if isinstance(out, tuple) else out)))
    with torch.no_grad():
        final = model.backbone(**adapter.forward_kwargs(ids, mask)).last_hidden_state
    for h in hooks:
        h.remove()
    return captured, final


def test_hidden_states_equal_a_direct_forward_pass(tiny_model, tokenizer, reviews):
    ids, mask = pad([tokenizer(r)["input_ids"] for r in reviews], tokenizer.pad_token_id)
    adapter = tiny_model.adapter
    with torch.no_grad():
        states = adapter.hidden_states(ids, mask)
    hooked, final = _layer_outputs_by_hooks(tiny_model, ids, mask)
    assert len(states) == adapter.num_layers + 1 == len(hooked)
    for layer in range(adapter.num_layers):  # embeddings and every layer but the last: raw
        assert torch.allclose(states[layer], hooked[layer], atol=1e-6), layer
    # the last entry is what the backbone returns (final norm applied for decoders)
    assert torch.allclose(states[-1], final, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(states[-1], adapter.final_norm(hooked[-1]), atol=1e-5)


def test_target_positions_by_hand(tiny_model):
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1]])  # right, right, left padded
    # encoders read the first real token (CLS), decoders the last real one
    expected = [3, 1, 4] if tiny_model.adapter.is_decoder else [0, 0, 2]
    assert tiny_model.adapter.target_positions(mask).tolist() == expected


def test_classifier_logits_do_not_depend_on_padding(tiny_model, tokenizer, reviews):
    """The target token is found under right and (for decoders) left padding: same logits as unpadded."""
    seqs = [tokenizer(r)["input_ids"] for r in reviews]
    with torch.no_grad():
        single = torch.stack([tiny_model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
        sides = ["right", "left"] if tiny_model.adapter.is_decoder else ["right"]
        for side in sides:
            ids, mask = pad(seqs, tokenizer.pad_token_id, side)
            assert torch.allclose(tiny_model(ids, mask), single, atol=1e-5), side
