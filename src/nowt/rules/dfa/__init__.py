"""Direct feedback alignment (Nøkland 2016) and indirect feedback alignment, on any model.

`nowt.convert(model, "dfa", seed=0)` works on any model whose output holds an `[N, n_out]` (or, per token, an
`[N, T, V]`) tensor: the tensor itself, a dict's, a ModelOutput's or a tuple's logits, or `output=`. The
training loop stays the user's own (`loss.backward(); optimizer.step()`); nothing is handed to the model.
One concern per module:
- `capture`: hooks on the converted model record the output error e during the ordinary backward pass;
- `rule`: `DirectFeedback`, whose layers send `e @ B.flatten(1)` to their input in place of the gradient
  through W, and its autograd Function;
- `storage`: where B lives ("dense", "shared" or "seeded") and how it is drawn;
- `state`: the state-dict hooks for the buffers made at the first forward;
- `blocks`: block-level DFA, a whole module's output gets `e @ B` and backprop runs inside it;
- `outputs`: which tensor of the model's output e is taken of (`output=`);
- `ifa`: `IndirectFeedback`, a subclass overriding what differs (which layer has a B, the error's sweep).
"""

from nowt.rules.dfa.ifa import ELEMENTWISE, IndirectFeedback
from nowt.rules.dfa.rule import DirectFeedback, DirectFeedbackFunction
from nowt.rules.dfa.storage import STORAGES, draw_chunk

__all__ = ["ELEMENTWISE", "STORAGES", "DirectFeedback", "DirectFeedbackFunction", "IndirectFeedback",
           "draw_chunk"]
