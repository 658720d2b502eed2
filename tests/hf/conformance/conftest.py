"""Markers transformers' own test modules use (registered so pytest does not warn about them; they select
nothing here)."""


def pytest_configure(config):
    for name in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{name}: a marker of transformers' own test suite")
