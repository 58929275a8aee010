"""Code the MedDiffusion Slicer modules share (packaged with MedDiffusionTranslation, used by both modules).

backend      finds the MedDiffusionExtension backend package (source tree or installed extension)
catalog      models, methods, targets, precisions and devices as the GUI shows them (rules: the backend's tasks)
dependencies checks and installs torch and the backend's packages inside Slicer
probe        asks the runner's Python (once per session, cached) which packages import and which devices exist
exchange     volume nodes <-> temporary NRRD files with exact geometry
gui          what both module widgets do alike: dependency state, id-carrying combos, progress, run outcome
process      the background runner process: start, progress lines, cancel (whole process tree)
job          one background run on volume nodes: temporary folder, runner, outputs read back, cleanup
scene        naming, provenance attributes, subject-hierarchy placement and display of outputs
sampledata   the bundled sample cases: checksums, SampleData registration, loading for self-tests

Nothing here imports torch, ever: the heavy work runs in the runner process, and the device list and the dependency
check come from the runner's `--probe`, so a broken torch cannot break a module panel. `catalog` imports only the
backend's torch-free task layer and model registry.
"""
