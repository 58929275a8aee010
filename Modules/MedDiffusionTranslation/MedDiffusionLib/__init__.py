"""Code the MedDiffusion Slicer modules share (packaged with MedDiffusionTranslation, used by both modules).

backend      finds the MedDiffusionExtension backend package (source tree or installed extension)
catalog      models, methods, targets and devices as the GUI shows them
dependencies checks and installs torch and the backend's packages inside Slicer
exchange     volume nodes <-> temporary NRRD files with exact geometry
gui          what both module widgets do alike: dependency state, id-carrying combos, progress, run outcome
process      the background runner process: start, progress lines, cancel (whole process tree)
job          one background run on volume nodes: temporary folder, runner, outputs read back, cleanup
scene        naming, provenance attributes, subject-hierarchy placement and display of outputs
sampledata   the bundled sample cases: checksums, SampleData registration, loading for self-tests

Nothing here imports torch at import time: the heavy work runs in the runner process. Only `catalog` imports the
backend's model registry and device list (and with them torch), and only once the dependencies are installed.
"""
