"""all-MiniLM-L6-v2 with int8 weight products: the graph of ``kb.onnx_minilm``, its matrices quantized.

Every product with a weight matrix (the query/key/value projection, the attention output, the two
feed-forward matrices: about 90% of the encoder's multiply-adds on a SciFact abstract) runs on onnxruntime's
int8 kernels: weights int8, symmetric, one scale per output column; activations quantized to uint8 at run
time, one scale per batch (``DynamicQuantizeMatMul``, and ``DynamicQuantizeLinear`` + ``QAttention`` for the
projection that feeds the fused attention). The embeddings, LayerNorms, softmax, GELU, pooling and
normalisation stay fp32.

BERT's activations have a few channels far larger than the rest (up to 30x), which one scale per batch
would resolve coarsely. So the 8 largest input channels of each feed-forward matrix are multiplied in fp32
on their own (zeroed in the int8 product's input and weight rows; for the second matrix, whose input channels
are the first one's outputs, the channels are reordered at build time so that one Split parts them), and the
attention's input is smoothed
channel by channel, its weight rows taking the factor on instead (``x W = (x / s) (s W)``, SmoothQuant,
``s = amax(x)^a / amax(W)^(1-a)``; measured to help there, not on the feed-forward matrices). The channel
maxima come from running the fp32 graph on ``CALIBRATION_TEXTS`` below, text written for this purpose
(varied prose, code, lists, questions; never evaluation data), so the graph is deterministic for given
weights. It is cached like the fp32 graph (``kb.onnx_minilm.cached_model``), under its own key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from kb.onnx_minilm import GRAPH_VERSION, OPSET, _GraphBuilder, build_graph, cached_model

QUANT_VERSION = 3
SMOOTHING_ALPHA = 0.5
WEIGHT_BITS = 8
OUTLIER_CHANNELS = 8

_SENTENCES = [
    "The committee approved the budget after a long debate about school funding and road repairs.",
    "Heat the oven to 200 degrees, then bake the bread for thirty-five minutes until the crust is golden.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "The patient reported mild headaches and fatigue, which resolved within two weeks of treatment.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "def merge(a, b):\n    return sorted(set(a) | set(b))",
    "SELECT name, count(*) FROM orders WHERE status = 'shipped' GROUP BY name ORDER BY 2 DESC;",
    "Error 0x80070005: access is denied. Run the installer as an administrator and try again.",
    "The tenant shall give the landlord sixty days' written notice before terminating this lease.",
    "Quarterly revenue rose 12% to $4.3 billion, driven by strong demand for cloud services.",
    "She walked along the beach at sunset, listening to the waves and thinking about her childhood.",
    "Mitochondria are the site of oxidative phosphorylation and produce most of the cell's ATP.",
    "Install the package with pip, then import it and call configure() before the first request.",
    "The striker scored twice in the second half, and the home team won the cup final 3-1.",
    "Symptoms of dehydration include thirst, dark urine, dizziness and a dry mouth.",
    "Shipping is free on orders over 50 euros; returns are accepted within 30 days of delivery.",
    "The Treaty of Westphalia in 1648 ended the Thirty Years' War and reshaped European politics.",
    "kubectl get pods -n production --field-selector=status.phase=Running",
    "What is the difference between a virus and a bacterium, and why do antibiotics not work on viruses?",
    "Gene expression was measured by quantitative PCR in three independent biological replicates.",
    "The new firmware fixes a bug that caused the device to reboot when the battery dropped below 5%.",
    "Please find attached the minutes of Tuesday's meeting; comments are welcome by Friday.",
    "A randomized controlled trial of 1,204 adults found no significant effect on blood pressure (p = 0.41).",
    "Le musée est ouvert tous les jours sauf le lundi, de neuf heures à dix-huit heures.",
    "Der Zug nach Berlin hat heute etwa zwanzig Minuten Verspätung.",
    "東京の天気は明日晴れる予報です。",
    "The algorithm runs in O(n log n) time and uses linear extra memory for the merge step.",
    "Interest rates were left unchanged, but the central bank signalled a cut later in the year.",
    "Wash your hands with soap for at least twenty seconds, especially before eating.",
    "The bridge, completed in 1932, spans 503 metres and carries eight lanes of traffic.",
    "TODO: handle the case where the upstream server closes the connection mid-response.",
    "Volcanic eruptions can cool the global climate by injecting sulfate aerosols into the stratosphere.",
    "Add two cups of flour, a pinch of salt and one egg, and mix until smooth.",
    "The court held that the contract was void because one party lacked the capacity to consent.",
    "Our team is hiring a senior backend engineer with experience in distributed systems.",
    "Neurons communicate across synapses by releasing neurotransmitters such as dopamine and glutamate.",
    "The hotel room was clean and quiet, but the breakfast was disappointing.",
    "To cancel your subscription, open Settings, choose Billing and select Cancel plan.",
    "Insulin resistance is a key feature of type 2 diabetes and is strongly associated with obesity.",
    "warning: unused variable 'count' [-Wunused-variable]",
]


def _calibration_texts() -> list[str]:
    """Single sentences, and paragraphs of eight (abstract-length inputs: ~200 tokens)."""
    paragraphs = [" ".join(_SENTENCES[i : i + 8]) for i in range(0, len(_SENTENCES), 8)]
    return ["hello", "kb", *_SENTENCES, *paragraphs]


CALIBRATION_TEXTS = _calibration_texts()


def calibration_digest() -> str:
    return hashlib.sha256("\x00".join(CALIBRATION_TEXTS).encode()).hexdigest()[:16]


def variant_key() -> str:
    """What, besides the weights, decides the int8 graph (part of its cache key)."""
    return f"int8-v{QUANT_VERSION}-a{SMOOTHING_ALPHA}-w{WEIGHT_BITS}-c{calibration_digest()}"


def quantize_columns(weight: np.ndarray, bits: int = WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8: ``weight ~= q * scale``, ``q`` in [-(2^(bits-1)-1), 2^(bits-1)-1]."""
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(weight).max(axis=0) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -qmax, qmax).astype(np.int8), scale


def activation_maxima(model_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every weight product's input in the fp32 graph, over the tokens of ``texts``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    builder = _GraphBuilder(model_dir)
    model = build_graph(model_dir, fused=True, builder=builder)
    watched = dict(builder.matmul_inputs)
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in dict.fromkeys(watched.values()))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    names = [o.name for o in session.get_outputs()]
    maxima: dict[str, np.ndarray] = {}
    for text in texts:  # one at a time: no padding rows to mask out
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        values = dict(zip(names, session.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)}),
                          strict=True))
        for tensor in set(watched.values()):
            observed = np.abs(values[tensor]).reshape(-1, values[tensor].shape[-1]).max(axis=0)
            maxima[tensor] = observed if tensor not in maxima else np.maximum(maxima[tensor], observed)
    return {prefix: maxima[tensor] for prefix, tensor in watched.items()}


class Int8Builder(_GraphBuilder):
    """Writes the weight products in int8, shaped by the calibrated channel maxima of their inputs."""

    def __init__(self, model_dir: Path, maxima: dict[str, np.ndarray], alpha: float = SMOOTHING_ALPHA,
                 bits: int = WEIGHT_BITS, outliers: int = OUTLIER_CHANNELS) -> None:
        super().__init__(model_dir)
        self.maxima = maxima
        self.alpha = alpha
        self.bits = bits
        self.outliers = outliers

    def matmul(self, x: str, prefix: str) -> list[str]:
        """Attention output: plain int8. Feed-forward: the largest input channels in fp32, the rest int8."""
        self.matmul_inputs.append((prefix, x))
        weight = self.transposed(prefix)
        if prefix.endswith(".attention.output.dense") or not self.outliers:
            return [self._int8_matmul(x, prefix, weight)]
        if prefix.endswith(".output.dense"):
            # the second feed-forward matrix: its input channels are the first one's outputs, reordered at
            # build time (``weight``) so that its outlier channels come last; one Split then parts them
            int8_width = weight.shape[0] - self.outliers
            rest, picked = self.split(x, [int8_width, self.outliers])
            return [self._int8_matmul(rest, prefix, weight[:int8_width]),
                    self.op("MatMul", [picked, self.const(f"{prefix}.fp32_weight", weight[int8_width:])])]
        channels = self._outlier_channels(prefix)
        keep = np.ones(weight.shape[0], dtype=np.float32)
        keep[channels] = 0.0
        # the outlier channels are zeroed in the int8 product's input (and weight rows, so that they do not
        # widen its column scales) and multiplied in fp32 on their own
        rest = self._int8_matmul(self.op("Mul", [x, self.const(f"{prefix}.int8_channels", keep)]), prefix,
                                 weight * keep[:, None])
        picked = self.op("Gather", [x, self.const(f"{prefix}.fp32_channels", channels.astype(np.int64))], axis=-1)
        outlier = self.op("MatMul", [picked, self.const(f"{prefix}.fp32_weight", weight[channels])])
        return [rest, outlier]  # added by the next node's Sum

    def _outlier_channels(self, prefix: str) -> np.ndarray:
        """The input channels of ``prefix`` with the largest calibrated maxima, in ascending order."""
        return np.sort(np.argsort(-self.maxima[prefix], kind="stable")[: self.outliers])

    def weight(self, name: str) -> np.ndarray:
        """The checkpoint's tensor, with each layer's intermediate channels reordered (outliers last).

        A permutation of the channels between the two feed-forward matrices changes nothing but the order
        the second one sums in; the first one's output columns and bias, and the second one's input rows,
        move together. The GELU between them is elementwise."""
        value = super().weight(name)
        layer, _, rest = name.partition(".intermediate.dense.")
        if self.outliers and rest in ("weight", "bias"):  # (intermediate, hidden) weight and its bias: rows
            return value[self._intermediate_order(layer)]
        layer, _, rest = name.partition(".output.dense.")
        if self.outliers and rest == "weight" and not layer.endswith(".attention"):  # (hidden, intermediate)
            return value[:, self._intermediate_order(layer)]
        return value

    def _intermediate_order(self, layer: str) -> np.ndarray:
        outliers = self._outlier_channels(f"{layer}.output.dense")
        ordinary = np.setdiff1d(np.arange(len(self.maxima[f"{layer}.output.dense"])), outliers)
        return np.concatenate([ordinary, outliers])

    def split(self, x: str, widths: list[int]) -> list[str]:
        from onnx import helper

        self._counter += 1
        outputs = [f"split_{self._counter}_{i}" for i in range(len(widths))]
        self.nodes.append(helper.make_node("Split", [x, self.i64(f"split_widths_{'_'.join(map(str, widths))}",
                                                                 widths)], outputs, axis=-1))
        return outputs

    def _int8_matmul(self, x: str, prefix: str, weight: np.ndarray) -> str:
        q, scale = quantize_columns(weight, self.bits)
        return self.op("DynamicQuantizeMatMul", [x, self.const(f"{prefix}.weight_q", q),
                                                 self.const(f"{prefix}.weight_scale", scale)], domain="com.microsoft")

    def attention(self, x: str, p: str, mask_i32: str) -> str:
        """The fused attention on int8 input and weights, the input smoothed first (SmoothQuant)."""
        prefix = f"{p}.qkv"
        self.matmul_inputs.append((prefix, x))
        qkv_w, qkv_b = self.qkv(p)
        x_max = np.maximum(self.maxima[prefix], 1e-5)
        w_max = np.maximum(np.abs(qkv_w).max(axis=1), 1e-5)
        smooth = (x_max**self.alpha / w_max ** (1 - self.alpha)).astype(np.float32)
        scaled_x = self.op("Mul", [x, self.const(f"{prefix}.smooth_inv", (1.0 / smooth).astype(np.float32))])
        q, scale = quantize_columns(qkv_w * smooth[:, None], self.bits)
        self._counter += 1
        quantized = [f"{prefix}.input_{part}_{self._counter}" for part in ("q", "scale", "zero")]
        self.nodes.append(_node("DynamicQuantizeLinear", [scaled_x], quantized))
        return self.op("QAttention", [quantized[0], self.const(f"{prefix}.weight_q", q),
                                      self.const(f"{prefix}.bias", qkv_b), quantized[1],
                                      self.const(f"{prefix}.weight_scale", scale), mask_i32, quantized[2]],
                       domain="com.microsoft", num_heads=self.heads)


def _node(kind: str, inputs: list[str], outputs: list[str]) -> Any:
    from onnx import helper

    return helper.make_node(kind, inputs, outputs)


def build_int8_graph(model_dir: Path, alpha: float = SMOOTHING_ALPHA, bits: int = WEIGHT_BITS,
                     outliers: int = OUTLIER_CHANNELS) -> Any:
    """The int8 ``onnx.ModelProto``: calibrate on ``CALIBRATION_TEXTS`` with the fp32 graph, then build."""
    maxima = activation_maxima(model_dir, CALIBRATION_TEXTS)
    return build_graph(model_dir, fused=True, builder=Int8Builder(model_dir, maxima, alpha, bits, outliers))


def int8_cache_key(weights_sha256: str) -> str:
    return hashlib.sha256(f"{weights_sha256}:graph-v{GRAPH_VERSION}:opset{OPSET}:fused:{variant_key()}"
                          .encode()).hexdigest()[:32]


def cached_int8_graph(model_dir: Path, cache_dir: Path, weights_sha256: str) -> Path:
    """The verified int8 graph for the weights in ``model_dir``, built (about 10 s) when missing or corrupt."""
    target = cache_dir / f"all-MiniLM-L6-v2-int8-{int8_cache_key(weights_sha256)}.onnx"
    return cached_model(target, lambda: build_int8_graph(model_dir))
