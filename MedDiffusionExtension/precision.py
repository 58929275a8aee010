"""The names of the numeric precisions and batch sizes a run can ask for; torch-free, shared by the task layer and
the device code.

Precision auto: bf16 autocast on GPUs with native bf16 (compute capability 8.0+), fp16 on older GPUs; on CPUs bf16
where the CPU has native bf16 units and the model's card allows it, else full precision.
Batch size auto: the model card's batch size for the device, else the rule in pipelines/batch_size.py.
"""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO_BATCH_SIZE = "auto"
