"""The layout: imports run one way, from the settings up to the scripts, and nothing imports a script."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train_encoder_qm9", "sampling_mlp_experiment", "export_pretrained_latents"}
LAYERS = [  # a module imports only from the layers below its own
    {"configs", "utils"},
    {"cli", "graphs", "selection", "plots", "distributed"},
    {"qm9", "coremof", "structure_file", "descriptors", "models", "pretrained"},
    {"data", "heads", "atom_targets"},
    {"adaptive"},
    {"latents", "evaluation", "teacher_targets"},
    {"training"},
    SCRIPTS,
]
LAYER_OF = {module: level for level, modules in enumerate(LAYERS) for module in modules}


def package_imports(path):
    """The package modules that the Python file `path` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYER_OF)


def test_every_module_has_a_layer():
    modules = {path.stem for path in ROOT.glob("*.py")}
    assert modules == set(LAYER_OF), f"modules without a layer: {sorted(modules - set(LAYER_OF))}; " \
                                     f"layers naming no module: {sorted(set(LAYER_OF) - modules)}"


def test_imports_run_one_way():
    upward = {module: sorted(name for name in package_imports(ROOT / f"{module}.py")
                             if LAYER_OF[name] >= LAYER_OF[module] and module not in SCRIPTS)
              for module in LAYER_OF}
    assert not {module: names for module, names in upward.items() if names}


def test_no_module_or_benchmark_imports_a_script():
    importers = [*(ROOT / f"{module}.py" for module in LAYER_OF), *ROOT.glob("benchmarks/*.py")]
    offenders = {str(path.relative_to(ROOT)): sorted(package_imports(path) & SCRIPTS) for path in importers}
    assert not {path: names for path, names in offenders.items() if names}


def test_tests_import_no_other_test_module():
    offenders = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        offenders[path.name] = sorted(name for name in imported if name.startswith("test_"))
    assert not {name: modules for name, modules in offenders.items() if modules}


def test_the_checker_finds_an_upward_import(tmp_path):
    module = tmp_path / "graphs.py"
    module.write_text("import numpy\nfrom training import train\nimport utils as u\n")
    assert package_imports(module) == {"training", "utils"}
