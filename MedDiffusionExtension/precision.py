"""The names of the numeric precisions a run can ask for; torch-free, shared by the task layer and the device code.

auto: bf16 autocast on GPUs with native bf16 (compute capability 8.0+), fp16 on older GPUs, full precision elsewhere.
"""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
