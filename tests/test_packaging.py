"""What a user installs and what only a checkout has."""

from __future__ import annotations

from pathlib import Path

from bagcams_deploy import __version__


def test_version_option_prints_the_package_version(cli):
    r = cli("--version")
    assert r.code == 0, r.err
    assert r.out.strip() == f"bagcams-deploy {__version__}"


def test_cpp_example_dir_outside_a_checkout_is_one_line(capsys, monkeypatch, tmp_path):
    """Installed from a wheel there is no examples/cpp beside the package: say so in one line, never
    print a folder that does not exist."""
    from bagcams_deploy import cpp_support

    assert cpp_support.main(["--example-dir"]) == 0  # a checkout's own
    assert (Path(capsys.readouterr().out.strip()) / "CMakeLists.txt").is_file()
    monkeypatch.setattr(cpp_support, "EXAMPLE_DIR", tmp_path / "site-packages" / "examples" / "cpp")
    assert cpp_support.main(["--example-dir"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: the C++ example's sources (examples/cpp) are not installed"), err
    assert err.count("\n") == 1
