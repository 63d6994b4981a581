"""The saved-tensor hooks shared by the activation transforms: a tensor that several ops save (q, k and v read one
normed input, each through its own view) is encoded once; parameters, small and integer tensors are kept as they are;
outside the decoder's forward nothing is encoded."""
import torch

from methods.saved_activations import SavedTensorCodec


class Counting(SavedTensorCodec):
    def __init__(self, min_numel):
        super().__init__(min_numel)
        self.encoded = []

    def encode(self, t):
        self.encoded.append(tuple(t.shape))
        return t.detach().clone()

    def decode(self, handle):
        return handle


def test_one_encoding_per_saved_storage_view_and_only_activations():
    torch.manual_seed(0)
    codec = Counting(min_numel=100)
    heads = [torch.nn.Linear(16, 16, bias=False) for _ in range(3)]
    x = torch.randn(2, 5, 16, requires_grad=True)
    codec.enter(None, ())
    h = x * 2  # mul saves no activation of x (a scalar factor)
    outs = [head(h) for head in heads]  # each saves h (as a 2-D view of it) and its weight (a parameter)
    small = (x[0, 0] * x[0, 1]).sum()  # saves two 16-element tensors: under min_numel
    table = torch.nn.Embedding(10, 16)
    index = torch.arange(10).view(2, 5)
    looked_up = table(index).sum()  # saves the integer indices
    codec.exit(None, (), None)
    assert codec.encoded == [(10, 16)]
    loss = sum(o.square().sum() for o in outs) + small + looked_up
    loss.backward()
    reference = x.detach().clone().requires_grad_()
    ref_h = reference * 2
    (sum((head(ref_h)).square().sum() for head in heads) + (reference[0, 0] * reference[0, 1]).sum()).backward()
    torch.testing.assert_close(x.grad, reference.grad)
    codec.encoded.clear()
    (x * x).sum().backward()  # the hooks are off outside the decoder's forward
    assert codec.encoded == []
