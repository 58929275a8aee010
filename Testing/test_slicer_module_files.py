"""Static checks of the Slicer module folders (the widgets cannot run here): .ui files well-formed, every widget the
code uses present, every SlicerParameterName a parameter-node field, CMakeLists listing every .py and resource, the
build tree holding what the package holds; and the bundled-sample-data helpers (SHA-256 check, SampleData
registration)."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ElementTree

import pytest

from slicer_compat.fixtures import MODULE_FOLDERS, sample_data, slicer_env, write_sample_data  # noqa: F401

QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QProgressBar",
              "QCheckBox", "QLineEdit", "QGroupBox", "QFrame", "QTextEdit"}
MODULES = {folder.name: folder for folder in MODULE_FOLDERS}
REPO = MODULE_FOLDERS[0].parents[1]


def ui_tree(name):
    return ElementTree.parse(MODULES[name] / "Resources" / "UI" / f"{name}.ui").getroot()


def ui_widgets(root) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def parameter_fields(name) -> set[str]:
    """Annotated fields of the module's @parameterNodeWrapper class, read from the source (no import needed)."""
    tree = ast.parse((MODULES[name] / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{name}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_ui_is_well_formed_and_uses_only_declared_widget_classes(name):
    root = ui_tree(name)
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == name
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name  # setMRMLScene propagates to node combos
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = set(ui_widgets(root).values())
    assert used <= QT_WIDGETS | custom, f"undeclared widget classes: {used - QT_WIDGETS - custom}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    # Every node selector receives the scene.
    selectors = {n for n, c in ui_widgets(root).items() if c == "qMRMLNodeComboBox"}
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors == receivers


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_widget_the_code_uses_exists_in_the_ui(name):
    # The module's own widget code, and the mixin both widgets share.
    shared = MODULE_FOLDERS[0] / "MedDiffusionLib" / "gui.py"
    for path in (MODULES[name] / f"{name}.py", shared):
        used = set(re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8")))
        missing = used - set(ui_widgets(ui_tree(name)))
        assert used and not missing, f"{path.name} uses widgets absent from {name}.ui: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_slicer_parameter_name_is_a_parameter_node_field(name):
    root = ui_tree(name)
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "dynamic properties need stdset=0"
                bound[widget.get("name")] = prop.findtext("string")
    fields = parameter_fields(name)
    assert bound and set(bound.values()) <= fields, f"unknown parameters: {set(bound.values()) - fields}"
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"
    # Combos whose items depend on installed models are filled by code, never bound (Slicer binds combos only to
    # fixed Choice lists).
    classes = ui_widgets(root)
    assert not [w for w in bound if classes[w] == "QComboBox"]


def _cmake_list(cmake: str, variable: str) -> list[str]:
    block = re.search(rf"set\({variable}\s+(.*?)\)", cmake, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_cmakelists_lists_every_python_file_and_resource(name):
    folder = MODULES[name]
    cmake = (folder / "CMakeLists.txt").read_text(encoding="utf-8")
    resolve = lambda entries: {e.replace("${MODULE_NAME}", name) for e in entries}  # noqa: E731
    scripts = resolve(_cmake_list(cmake, "MODULE_PYTHON_SCRIPTS"))
    resources = resolve(_cmake_list(cmake, "MODULE_PYTHON_RESOURCES"))
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk, f"listed but absent: {scripts - on_disk}; present but not listed: {on_disk - scripts}"
    on_disk_resources = {p.relative_to(folder).as_posix() for p in (folder / "Resources").rglob("*") if p.is_file()}
    assert resources == on_disk_resources
    assert f"set(MODULE_NAME {name})" in cmake
    assert "slicerMacroBuildScriptedModule(" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def _cmake_calls(path, command) -> list[list[str]]:
    """The arguments of every `command(...)` in a CMake file, comments dropped, quotes removed."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    return [shlex.split(m.group(1)) for m in re.finditer(rf"\b{command}\((.*?)\)", text, re.S)]


def _copy_rule(arguments, keyword, source_prefix, destination_prefix):
    """(sources, destination below the qt-scripted-modules folder, patterns) of an install(DIRECTORY) / file(COPY)."""
    start, at = arguments.index(keyword) + 1, arguments.index("DESTINATION")
    sources = tuple(a.removeprefix(source_prefix) for a in arguments[start:at])
    destination = arguments[at + 1]
    assert destination.startswith(destination_prefix), destination
    rest = arguments[at + 2:]
    if "COMPONENT" in rest:  # packaging only
        del rest[rest.index("COMPONENT"):rest.index("COMPONENT") + 2]
    return sources, destination.removeprefix(destination_prefix), tuple(rest)


def test_build_tree_gets_a_copy_of_everything_the_package_installs_beside_the_modules():
    # slicerMacroBuildScriptedModule copies only the listed module files into the build tree; the backend and
    # Resources must get there too, or ctest and the build-tree launcher cannot load the modules.
    top = REPO / "CMakeLists.txt"
    installed = sorted(_copy_rule(a, "DIRECTORY", "", "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}")
                       for a in _cmake_calls(top, "install") if a[0] == "DIRECTORY")
    assert [rule[0] for rule in installed] == [("MedDiffusionExtension",), ("Resources/Models", "Resources/SampleData")]
    [target] = [a for a in _cmake_calls(top, "add_custom_target") if "-P" in a]
    assert target[1] == "ALL", "the copy must run on every build"
    assert "-DSOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}" in target
    assert "-DDESTINATION_DIR=${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in target  # the macro's folder
    script = REPO / target[target.index("-P") + 1].replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
    copied = sorted(_copy_rule(a, "COPY", "${SOURCE_DIR}/", "${DESTINATION_DIR}") for a in _cmake_calls(script, "file"))
    assert copied == installed
    for sources, _destination, _patterns in installed:
        assert all((REPO / source).is_dir() for source in sources)


@pytest.mark.skipif(shutil.which("cmake") is None or not (shutil.which("cc") and shutil.which("c++")),
                    reason="needs cmake and the C/C++ compilers its project() checks for")
def test_cmake_build_tree_and_install_tree_hold_the_same_runtime_files(tmp_path):
    # A stand-in for Slicer's CMake package: the two folder variables, and macros that do nothing (the modules' own
    # files are copied by Slicer's macro, not under test here).
    slicer = tmp_path / "Slicer"
    slicer.mkdir()
    (slicer / "empty.cmake").write_text("")
    (slicer / "SlicerConfig.cmake").write_text("\n".join([
        *(f"set({v} ${{CMAKE_CURRENT_LIST_DIR}}/empty.cmake)"
          for v in ("Slicer_USE_FILE", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK")),
        "set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)",
        "set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)",
        "macro(slicerMacroBuildScriptedModule)\nendmacro()", "macro(slicer_add_python_unittest)\nendmacro()", ""]))
    build, install = tmp_path / "build", tmp_path / "install"
    for command in (["-S", REPO, "-B", build, f"-DSlicer_DIR={slicer}", f"-DCMAKE_INSTALL_PREFIX={install}"],
                    ["--build", build], ["--install", build]):
        subprocess.run(["cmake", *map(str, command)], check=True, capture_output=True, timeout=300)
    folder = "lib/Slicer-5.8/qt-scripted-modules"
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # noqa: E731
    built = files(build / folder)
    assert built == files(install / folder)
    assert "MedDiffusionExtension/runner.py" in built and not [f for f in built if "__pycache__" in f]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_file_has_the_template_classes(name):
    tree = ast.parse((MODULES[name] / f"{name}.py").read_text(encoding="utf-8"))
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {name, f"{name}ParameterNode", f"{name}Widget", f"{name}Logic", f"{name}Test"} <= classes
    icon = MODULES[name] / "Resources" / "Icons" / f"{name}.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_case_files_are_found_by_role_and_checked(slicer_env, tmp_path):  # noqa: F811
    from MedDiffusionLib import sampledata

    folder = write_sample_data(tmp_path / "SampleData")
    files = sampledata.caseFiles("mri", folder)
    assert list(files) == ["t1n", "t2w", "t1c", "t2f", "seg"]
    assert list(sampledata.caseFiles("ct", folder)) == ["image", "label"]
    nodes = sampledata.loadSampleCase("ct", folder=folder)
    assert nodes["image"].GetName() == "mdtest-ct" and nodes["label"].IsA("vtkMRMLLabelMapVolumeNode")

    corrupted = files["t2w"][0]
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="does not match its checksum"):
        sampledata.loadSampleCase("mri", roles=("t2w",), folder=folder)
    (folder / "mdtest-brain-t1n.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no sample case MedDiffusionBrainMRI"):
        sampledata.caseFiles("mri", folder)


def test_sample_file_names_split_into_case_and_role(slicer_env):  # noqa: F811
    from MedDiffusionLib.sampledata import splitName

    assert splitName("PhantomBrainMR-t1n.nii.gz") == ("PhantomBrainMR", "t1n")
    assert splitName("sub/PhantomAbdomenCT.nii.gz") == ("PhantomAbdomenCT", "image")
    assert splitName("PhantomAbdomenCT-label.nii.gz") == ("PhantomAbdomenCT", "label")
    assert splitName("case_img.nrrd") == ("case", "image")
    assert splitName("Brain-T2W.nii") == ("Brain", "t2w")
    assert splitName("scan-2024.nii.gz") == ("scan-2024", "image")


def test_bundled_sample_data_holds_both_cases_when_present(slicer_env):  # noqa: F811
    from MedDiffusionLib import sampledata

    folder = sampledata.sampleDataFolder()
    if not (folder / sampledata.CHECKSUMS_FILE).is_file():
        pytest.skip("Resources/SampleData has not been generated")
    mri, ct = sampledata.caseFiles("mri"), sampledata.caseFiles("ct")
    assert set(mri) == {"t1n", "t2w", "t1c", "t2f", "seg"} and set(ct) == {"image", "label"}
    for path, checksum in [*mri.values(), *ct.values()]:
        assert sampledata.sha256(path) == checksum


def test_sample_data_registration_passes_local_files_with_sha256(slicer_env, sample_data, monkeypatch):  # noqa: F811
    from MedDiffusionLib import sampledata

    calls = []
    fake = types.ModuleType("SampleData")  # the SampleData module exists only in desktop Slicer
    fake.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    assert sampledata.registerSampleData("icon.png", sample_data) == ["MedDiffusionBrainMRI", "MedDiffusionAbdomenCT"]
    mri = calls[0]
    assert mri["category"] == "MedDiffusion" and mri["thumbnailFileName"] == "icon.png"
    assert mri["fileNames"][:2] == ["mdtest-brain-t1n.nii.gz", "mdtest-brain-t2w.nii.gz"]
    assert all(uri.startswith("file://") for uri in mri["uris"])
    sums = sampledata.readChecksums(sample_data)
    assert mri["checksums"][0] == f"SHA256:{sums['mdtest-brain-t1n.nii.gz']}"
    assert mri["loadFileType"][-1] == "SegmentationFile" and mri["loadFileType"][0] == "VolumeFile"


def test_backend_is_found_from_the_module_folder():
    sys.path.append(str(MODULE_FOLDERS[0]))
    from MedDiffusionLib import backend

    root = backend.backendRoot()
    assert backend.makeImportable() == ""
    assert (root / "MedDiffusionExtension" / "runner.py").is_file()
    assert backend.resourcesFolder() == root / "Resources"
    env = backend.runnerEnvironment()
    assert env["PYTHONPATH"].split(":")[0] == str(root) and env["PYTHONUNBUFFERED"] == "1"
