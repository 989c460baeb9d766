"""contract.declared_mismatches: a served model's declared tensors against a contract."""

from __future__ import annotations

from autoglm.triton_models import contract
from autoglm.triton_models import vllm_contract as vc


def declared(specs: tuple[contract.TensorSpec, ...]) -> dict[str, str]:
    return {s.name: s.data_type for s in specs}


def test_a_model_declaring_the_contract_matches() -> None:
    ids = contract.declared_mismatches(
        declared(contract.INPUTS),
        declared(contract.OUTPUTS),
        sent=contract.INPUTS,
        read=(contract.OUTPUT_IDS,),
    )
    text = contract.declared_mismatches(
        declared(vc.INPUTS), declared(vc.OUTPUTS), sent=vc.SENT_BY_FACADE, read=vc.READ_BY_FACADE
    )
    assert ids == text == []


def test_a_token_id_model_under_the_text_contract_is_named() -> None:
    problems = contract.declared_mismatches(
        declared(contract.INPUTS),
        declared(contract.OUTPUTS),
        sent=vc.SENT_BY_FACADE,
        read=vc.READ_BY_FACADE,
    )
    assert "no input 'text_input'" in problems
    assert "no output 'text_output'" in problems


def test_a_wrong_data_type_is_named() -> None:
    inputs = declared(contract.INPUTS) | {"seed": "TYPE_INT64"}
    problems = contract.declared_mismatches(
        inputs, declared(contract.OUTPUTS), sent=contract.INPUTS, read=(contract.OUTPUT_IDS,)
    )
    assert problems == ["input 'seed' is TYPE_INT64, not TYPE_UINT64"]


def test_the_facade_sends_and_reads_only_tensors_of_its_contract() -> None:
    assert set(vc.SENT_BY_FACADE) <= set(vc.INPUTS)
    assert set(vc.READ_BY_FACADE) <= set(vc.OUTPUTS)
