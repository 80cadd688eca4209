"""all-MiniLM-L6-v2 as an ONNX graph, built from the package's safetensors weights without torch.

The graph is the BERT encoder of the checkpoint (embeddings, ``num_hidden_layers`` transformer layers with
erf GELU and post-LayerNorm), then what the sentence-transformers pipeline in ``modules.json`` does after it:
mean pooling over the attention mask and L2 normalisation. Inputs ``input_ids`` and ``attention_mask``
(int64, batch x sequence); output ``embeddings`` (float32, batch x hidden), unit length.

It is built once at first use and cached under ``$KB_HOME/models/`` in a file named by the sha256 of the
weights and of this builder's version, written atomically (temp file, fsync, rename), with a sidecar holding
the file's own sha256 so that a truncated or altered cache file is detected and rebuilt, never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# bump when the graph below changes: old cache files then simply stop matching
GRAPH_VERSION = 2
OPSET = 18  # LayerNormalization is standard from 17, reductions take axes as an input from 18
_HASH_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(weights_sha256: str, fused: bool = True) -> str:
    flavour = "fused" if fused else "standard"
    return hashlib.sha256(f"{weights_sha256}:graph-v{GRAPH_VERSION}:opset{OPSET}:{flavour}".encode()).hexdigest()[:32]


def cached_graph(model_dir: Path, cache_dir: Path, weights_sha256: str, fused: bool = True) -> Path:
    """The path of a verified ONNX graph for the weights in ``model_dir``, building it when missing or corrupt."""
    target = cache_dir / f"all-MiniLM-L6-v2-{cache_key(weights_sha256, fused)}.onnx"
    return cached_model(target, lambda: build_graph(model_dir, fused=fused))


def cached_model(target: Path, build: Callable[[], Any]) -> Path:
    """``target`` if it matches the sha256 in its sidecar, else ``build()`` (a ModelProto) written there."""
    sidecar = target.with_suffix(".sha256")
    if target.is_file() and sidecar.is_file():
        expected = sidecar.read_text(encoding="ascii").strip()
        if file_sha256(target) == expected:
            return target
        log.warning("cached ONNX graph %s does not match its recorded sha256; rebuilding it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = build().SerializeToString()
    _write_atomically(target, data)
    _write_atomically(sidecar, (hashlib.sha256(data).hexdigest() + "\n").encode("ascii"))
    log.info("built the ONNX graph %s (%.1f MB)", target, len(data) / 1e6)
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def build_graph(model_dir: Path, fused: bool = True, builder: _GraphBuilder | None = None) -> Any:
    """The ``onnx.ModelProto`` of the encoder + mean pooling + L2 normalisation.

    ``fused`` writes each layer with onnxruntime's CPU kernels for BERT (``com.microsoft`` Attention and
    BiasGelu), which onnxruntime's own optimiser does not find in this graph; without it the graph uses
    standard ONNX ops only (runs anywhere, about a quarter slower here). ``builder`` writes the
    weight products (``kb.onnx_quantize`` passes one that writes them in int8); it records where they are.
    """
    import onnx
    from onnx import TensorProto, helper

    g = builder or _GraphBuilder(model_dir)
    config = g.config
    hidden = g.hidden

    # embeddings: word + position + token type 0 (kb never sends a second segment), then LayerNorm
    words = g.op("Gather", [g.const("word_embeddings", g.weight("embeddings.word_embeddings.weight")), "input_ids"])
    seq_len = g.op("Slice", [g.op("Shape", ["input_ids"]), g.i64("one_1d", [1]), g.i64("two_1d", [2])])
    # token type 0 is added to every position: folded into the position table (one Add fewer per run)
    position_table = (g.weight("embeddings.position_embeddings.weight")
                      + g.weight("embeddings.token_type_embeddings.weight")[0])
    positions = g.op("Slice", [g.const("position_embeddings_type_0", position_table),
                               g.i64("zero_1d", [0]), seq_len, g.i64("zero_axis", [0])])
    x = g.layer_norm(g.op("Add", [words, positions]), "embeddings.LayerNorm")

    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    layers = range(int(config["num_hidden_layers"]))
    if fused:
        mask_i32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
        for i in layers:
            x = g.fused_layer(x, f"encoder.layer.{i}", mask_i32)
    else:
        # additive attention bias: 0 where a token is real, the lowest float where it is padding
        mask_bias = g.op("Mul", [g.op("Sub", [g.const("one_f", np.float32(1.0)), mask_f]),
                                 g.const("mask_min", np.float32(np.finfo(np.float32).min))])
        mask_bias = g.op("Unsqueeze", [mask_bias, g.i64("mask_axes", [1, 2])])  # (batch, 1, 1, seq)
        for i in layers:
            x = g.standard_layer(x, f"encoder.layer.{i}", mask_bias)

    # mean pooling over real tokens, then L2 normalisation (torch.nn.functional.normalize: divide by
    # max(norm, 1e-12)). The division by the token count cancels in the normalisation, so only the masked sum
    # is computed (one Einsum instead of six nodes; vectors the same to float rounding, about 1e-7).
    pooled = g.op("Einsum", [mask_f, x], equation="bs,bsh->bh")
    norm = g.op("Clip", [g.op("ReduceL2", [pooled, g.i64("hidden_axis", [1])], keepdims=1),
                         g.const("norm_min", np.float32(1e-12))])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embeddings"]))

    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        outputs=[helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="kb")
    model.ir_version = 8  # what every onnxruntime from 1.14 on reads
    onnx.checker.check_model(model)
    return model


class _GraphBuilder:
    """Nodes and initializers of one graph, with the few building blocks BERT needs."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        _check_config(config, model_dir)
        self.config = config
        self.source = model_dir / "model.safetensors"
        self.weights = load_file(str(self.source))
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._counter = 0
        # (weight prefix, input tensor) of every product with a weight matrix, in graph order
        self.matmul_inputs: list[tuple[str, str]] = []

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self._names:  # shared scalars are declared once
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, name: str, values: list[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def op(self, kind: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        self._counter += 1
        out = f"{kind.lower()}_{self._counter}"
        self.nodes.append(helper.make_node(kind, inputs, [out], domain=domain or None, **attrs))
        return out

    def weight(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise ValueError(f"{self.source} has no tensor {name!r}")
        return self.weights[name].astype(np.float32)

    def transposed(self, prefix: str) -> np.ndarray:
        # torch's Linear stores (out, in); the graph multiplies by (in, out)
        return self.weight(f"{prefix}.weight").T

    def dense(self, x: str, prefix: str) -> str:
        w = self.const(f"{prefix}.weight_t", self.transposed(prefix))
        return self.op("Add", [self.op("MatMul", [x, w]), self.const(f"{prefix}.bias", self.weight(f"{prefix}.bias"))])

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", [x, self.const(f"{prefix}.weight", self.weight(f"{prefix}.weight")),
                                              self.const(f"{prefix}.bias", self.weight(f"{prefix}.bias"))],
                       axis=-1, epsilon=self.eps)

    def standard_layer(self, x: str, p: str, mask_bias: str) -> str:
        head_dim = self.hidden // self.heads
        split = self.i64("split_heads", [0, 0, self.heads, head_dim])
        merge = self.i64("merge_heads", [0, 0, self.hidden])
        scale = self.const("attention_scale", np.float32(1.0 / math.sqrt(head_dim)))
        heads = {}
        for name, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            projected = self.op("Reshape", [self.dense(x, f"{p}.attention.self.{name}"), split])
            heads[name] = self.op("Transpose", [projected], perm=perm)
        scores = self.op("Add", [self.op("Mul", [self.op("MatMul", [heads["query"], heads["key"]]), scale]),
                                 mask_bias])
        context = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), heads["value"]])
        context = self.op("Reshape", [self.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = self.layer_norm(self.op("Add", [self.dense(context, f"{p}.attention.output.dense"), x]),
                            f"{p}.attention.output.LayerNorm")
        h = self.dense(x, f"{p}.intermediate.dense")
        erf = self.op("Erf", [self.op("Div", [h, self.const("sqrt2", np.float32(math.sqrt(2.0)))])])
        h = self.op("Mul", [self.op("Mul", [h, self.const("half", np.float32(0.5))]),
                            self.op("Add", [erf, self.const("one_gelu", np.float32(1.0))])])  # exact (erf) GELU
        return self.layer_norm(self.op("Add", [self.dense(h, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")

    def fused_layer(self, x: str, p: str, mask_i32: str) -> str:
        ms = "com.microsoft"
        context = self.attention(x, p, mask_i32)
        out = f"{p}.attention.output"
        x = self.skip_layer_norm(self.matmul(context, f"{out}.dense"), x, out, f"{out}.dense.bias")
        h = self.op("BiasGelu", [self.added(self.matmul(x, f"{p}.intermediate.dense")),
                                 self.const(f"{p}.intermediate.dense.bias",
                                            self.weight(f"{p}.intermediate.dense.bias"))], domain=ms)  # erf GELU
        return self.skip_layer_norm(self.matmul(h, f"{p}.output.dense"), x, f"{p}.output", f"{p}.output.dense.bias")

    def qkv(self, p: str) -> tuple[np.ndarray, np.ndarray]:
        """The query, key and value projections side by side: (hidden, 3 x hidden) and their biases."""
        names = ("query", "key", "value")
        return (np.concatenate([self.transposed(f"{p}.attention.self.{n}") for n in names], axis=1),
                np.concatenate([self.weight(f"{p}.attention.self.{n}.bias") for n in names]))

    def attention(self, x: str, p: str, mask_i32: str) -> str:
        self.matmul_inputs.append((f"{p}.qkv", x))
        qkv_w, qkv_b = self.qkv(p)
        # a 2-D int mask is the raw attention mask: padded keys get mask_filter_value before the softmax
        return self.op("Attention", [x, self.const(f"{p}.qkv.weight_t", qkv_w), self.const(f"{p}.qkv.bias", qkv_b),
                                     mask_i32], domain="com.microsoft", num_heads=self.heads,
                       mask_filter_value=float(np.finfo(np.float32).min))

    def matmul(self, x: str, prefix: str) -> list[str]:
        """x times the Linear layer ``prefix``'s weight, without its bias (the next node adds it), as terms to
        add up: one here; the int8 builder returns two (int8 and fp32 channels), which the residual's ``Sum``
        takes as they are."""
        self.matmul_inputs.append((prefix, x))
        return [self.op("MatMul", [x, self.const(f"{prefix}.weight_t", self.transposed(prefix))])]

    def added(self, terms: list[str]) -> str:
        return terms[0] if len(terms) == 1 else self.op("Sum", terms)

    def skip_layer_norm(self, terms: list[str], skip: str, prefix: str, bias: str) -> str:
        """LayerNorm(x + bias + skip): one ``Sum`` and a standard ``LayerNormalization``.

        Not onnxruntime's ``SkipLayerNormalization``: its CPU kernel (1.32) takes about 2 us per 384-wide row,
        eight times this pair (13 tokens x 12 of them: 0.30 ms against 0.07 ms, a third of the int8 query's
        budget). ``Sum`` rather than ``Add``, because the optimiser fuses Add + LayerNormalization into it."""
        return self.layer_norm(self.op("Sum", [*terms, self.const(bias, self.weight(bias)), skip]),
                               f"{prefix}.LayerNorm")


def _check_config(config: dict[str, Any], model_dir: Path) -> None:
    """The builder knows one architecture: refuse anything else rather than build a wrong graph."""
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ValueError(f"{model_dir / 'config.json'}: {key} is {config.get(key)!r}, the ONNX builder "
                             f"supports only {value!r}")
    if int(config["hidden_size"]) % int(config["num_attention_heads"]):
        raise ValueError(f"{model_dir / 'config.json'}: hidden_size is not a multiple of num_attention_heads")
