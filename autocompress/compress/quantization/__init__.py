"""Quantization: the number format of the deployed model, with real kernels (torch.ao).

``formats`` declares each mode's number format, ``torch_ao`` wraps torch.ao (FX static int8,
QAT, dynamic int8, what a converted model holds), ``torchao_modes`` wraps torchao (weight
tensor subclasses for Linear layers, PT2E static int8), ``skeleton`` rebuilds either for
loading, ``technique`` is the technique.
"""

from autocompress.compress.quantization.formats import FLOAT_DTYPES, CastInputs, number_format
from autocompress.compress.quantization.technique import Quantization, select
from autocompress.compress.quantization.skeleton import load_into, quantized_skeleton
from autocompress.compress.quantization.torch_ao import (INT8_MODES, check_quantized, float_layers,
                                                         quantized_layers, weight_dtypes)

__all__ = ["FLOAT_DTYPES", "INT8_MODES", "CastInputs", "Quantization", "check_quantized", "float_layers",
           "load_into", "number_format", "quantized_layers", "quantized_skeleton", "select", "weight_dtypes"]
