"""TEST-ONLY `slicer.parameterNodeWrapper`: typed fields stored in a real vtkMRMLScriptedModuleNode.

Supports what the MedDiffusion modules declare: str, int, float, bool (optionally Annotated with WithinRange,
Minimum, Maximum, Choice, Default) and MRML node classes (stored as node references, role = field name). Values are
validated on assignment like Slicer's wrapper does. GUI binding needs Qt: connectGui binds nothing here (it only
returns a tag); the .ui files' SlicerParameterName properties are checked statically instead.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any

import slicer

__all__ = ["parameterNodeWrapper", "WithinRange", "Minimum", "Maximum", "Choice", "Default"]


@dataclass(frozen=True)
class WithinRange:
    minimum: Any
    maximum: Any

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"value {value} is not within [{self.minimum}, {self.maximum}]")


@dataclass(frozen=True)
class Minimum:
    minimum: Any

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"value {value} is below the minimum {self.minimum}")


@dataclass(frozen=True)
class Maximum:
    maximum: Any

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"value {value} is above the maximum {self.maximum}")


@dataclass(frozen=True)
class Choice:
    choices: tuple

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"value {value!r} is not one of {self.choices}")


@dataclass(frozen=True)
class Default:
    value: Any


_SIMPLE_DEFAULTS = {str: "", int: 0, float: 0.0, bool: False}


def _isNodeType(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)


@dataclass
class _Field:
    name: str
    kind: type
    validators: list
    default: Any

    def read(self, node):
        if _isNodeType(self.kind):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.kind is bool:
            return text == "true"
        return self.kind(text)

    def write(self, node, value) -> None:
        if _isNodeType(self.kind):
            if value is not None and not value.IsA(self.kind.__name__):
                raise TypeError(f"{self.name} must be a {self.kind.__name__}, got {value.GetClassName()}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if self.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{self.name} must be a {self.kind.__name__}, got {value!r}")
        if self.kind is int and not float(value).is_integer():
            raise TypeError(f"{self.name} must be an int, got {value!r}")
        if self.kind in (str, bool) and not isinstance(value, self.kind):
            raise TypeError(f"{self.name} must be a {self.kind.__name__}, got {value!r}")
        value = self.kind(value)
        for validator in self.validators:
            validator.validate(value)
        node.SetParameter(self.name, ("true" if value else "false") if self.kind is bool else str(value))


def _fields(cls) -> dict[str, _Field]:
    fields = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        metadata = ()
        if typing.get_origin(hint) is Annotated:
            hint, *metadata = typing.get_args(hint)
        optional = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and len(optional) == 1:
            hint = optional[0]
        if not (_isNodeType(hint) or hint in _SIMPLE_DEFAULTS):
            raise TypeError(f"{cls.__name__}.{name}: type {hint!r} is not supported by the test-only wrapper")
        defaults = [m.value for m in metadata if isinstance(m, Default)]
        default = getattr(cls, name, defaults[0] if defaults else (None if _isNodeType(hint) else _SIMPLE_DEFAULTS[hint]))
        fields[name] = _Field(name, hint, [m for m in metadata if hasattr(m, "validate")], default)
    return fields


def parameterNodeWrapper(cls):
    fields = _fields(cls)

    def __init__(self, parameterNode):
        object.__setattr__(self, "parameterNode", parameterNode)
        for field in fields.values():  # like Slicer: defaults are written on first wrap only
            if not _isNodeType(field.kind) and not parameterNode.GetParameter(field.name):
                field.write(parameterNode, field.default)

    def makeProperty(field):
        return property(lambda self: field.read(self.parameterNode),
                        lambda self, value: field.write(self.parameterNode, value))

    def connectGui(self, gui):
        return object()

    def disconnectGui(self, tag):
        pass

    cls.__init__ = __init__
    for name, field in fields.items():
        setattr(cls, name, makeProperty(field))
    cls.allParameters = dict(fields)
    cls.default = lambda self, name: Default(fields[name].default)
    cls.getValue = lambda self, name: fields[name].read(self.parameterNode)
    cls.setValue = lambda self, name, value: fields[name].write(self.parameterNode, value)
    cls.connectGui, cls.disconnectGui = connectGui, disconnectGui
    # Like Slicer's wrapper, observation and batching go to the wrapped node.
    cls.StartModify = lambda self: self.parameterNode.StartModify()
    cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
    cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority)
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    cls.Modified = lambda self: self.parameterNode.Modified()
    return cls
