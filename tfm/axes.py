"""The logical axis vocabulary of tfm, defined once.

Every parameter is created through `nn.with_logical_partitioning` with names from this list, and
block outputs are constrained with `nn.with_logical_constraint`. Sharding a model therefore only
needs a mesh and rules mapping these names to mesh axes (`DEFAULT_RULES` below); with no mesh
in context the constraints are no-ops and everything runs on one device.

Parameter axes:
  vocab        token vocabulary (embedding rows, LM-head columns)
  embed        the model width d_model
  heads        query heads
  kv_heads     key/value heads (fewer than `heads` in GQA / MQA)
  kv           per-head feature dimension head_dim
  mlp          the MLP hidden width d_ff
  position     rows of a learned absolute position table (never sharded)
  type_vocab   rows of the token-type table (BERT segment A/B; never sharded)
  rel_buckets  T5 relative-position buckets (never sharded)
  labels       classification classes (never sharded)
  layers       the stacked layer axis when layers are scanned (never sharded)

Activation axes:
  batch        examples in a batch
  length       query / sequence positions
  kv_length    key / value positions
  (plus embed, heads, kv, mlp, vocab as above)
"""

PARAM_AXES = ("vocab", "embed", "heads", "kv_heads", "kv", "mlp", "position", "type_vocab",
              "rel_buckets", "labels", "layers")
ACTIVATION_AXES = ("batch", "length", "kv_length")
ALL_AXES = PARAM_AXES + ACTIVATION_AXES

# Logical name -> mesh axis (or axes, or None = replicated) for a ("data", "fsdp", "tensor") mesh.
# tfm.parallel resolves rules in order and never uses a mesh axis twice in one array, so an
# activation [batch, length, embed] is sharded over (data, fsdp) on batch and left whole on embed,
# and the second name of an [embed, embed] kernel gets the next free axis or none. (Flax's own
# nn.logical_to_mesh_axes raises on a repeated name; use tfm.parallel's resolver.)
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv_length", None),
    ("kv", None),
    ("position", None),
    ("type_vocab", None),
    ("rel_buckets", None),
    ("labels", None),
    ("layers", None),
)
