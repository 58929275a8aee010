"""Volume nodes <-> temporary NRRD files for the runner, without ever touching the input nodes or the scene.

Writing goes through a standalone storage node (the input node gets no storage node and is not marked modified).
Reading fills a node that is not in the scene yet, so a failed read adds nothing. A text format rounds the
IJK-to-RAS matrix in its last digits; outputs are defined on the reference input's grid, so after checking that the
file agrees with the reference within GEOMETRY_TOLERANCE_MM, the reference's exact geometry is copied onto the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

import slicer

GEOMETRY_TOLERANCE_MM = 1e-4


def ijkToRas(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def writeVolumeNode(volumeNode, path: Path) -> Path:
    """Write a volume node's voxels and IJK-to-RAS (not its parent transform) to NRRD."""
    if volumeNode.GetImageData() is None:
        raise ValueError(f"volume {volumeNode.GetName()!r} has no voxels")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # a temporary file read once: speed over size
    if not storage.WriteData(volumeNode):
        raise RuntimeError(f"could not write {volumeNode.GetName()!r} to {path}")
    return Path(path)


def readVolumeFile(path: Path, nodeClassName: str = "vtkMRMLScalarVolumeNode"):
    """A new node of `nodeClassName`, not in the scene, holding the file's voxels and geometry."""
    node = getattr(slicer, nodeClassName)()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise RuntimeError(f"could not read the runner's output {path}")
    return node


def readVolumeOnGrid(path: Path, referenceNode, nodeClassName: str = "vtkMRMLScalarVolumeNode",
                     tolerance: float = GEOMETRY_TOLERANCE_MM):
    """A new node (not in the scene) on exactly the reference's grid, holding the file's voxels, after checking
    that the file's own grid agrees with the reference's."""
    fileNode = readVolumeFile(path, nodeClassName)
    dims, refDims = fileNode.GetImageData().GetDimensions(), referenceNode.GetImageData().GetDimensions()
    if tuple(dims) != tuple(refDims):
        raise RuntimeError(f"the runner's output has {dims} voxels, the reference {referenceNode.GetName()!r} {refDims}")
    difference = np.abs(ijkToRas(fileNode) - ijkToRas(referenceNode)).max()
    if difference > tolerance:
        raise RuntimeError(f"the runner's output is {difference:.3g} mm off the grid of {referenceNode.GetName()!r}")
    # A fresh node takes origin, spacing and directions as the reference stores them: setting them on the file's
    # node would be skipped for differences below MRML's own tolerance, leaving the file's rounded values.
    node = getattr(slicer, nodeClassName)()
    node.CopyOrientation(referenceNode)
    node.SetAndObserveImageData(fileNode.GetImageData())
    return node
