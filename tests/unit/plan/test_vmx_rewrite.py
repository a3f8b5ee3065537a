"""The .vmx prepared before registering: NICs on the mapped port groups and uuid.action set,
every other byte kept (a real ESXi host then needs neither ReconfigVM_Task nor the question)."""

from __future__ import annotations

import pytest

from esxdr.plan.runbook import UUID_ACTIONS, rewrite_vmx

VMX = ('.encoding = "UTF-8"\n'
       'displayName = "app01"\n'
       'ethernet0.present = "TRUE"\n'
       'ethernet0.networkName = "Prod-LAN"\n'
       'ethernet1.networkName = "Backup"\n'
       'uuid.bios = "42 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8"\n')


def test_maps_nics_and_appends_uuid_action():
    text, changes = rewrite_vmx(VMX, {"Prod-LAN": "DR-LAN"}, "keep")
    assert 'ethernet0.networkName = "DR-LAN"\n' in text
    assert 'ethernet1.networkName = "Backup"\n' in text  # not mapped: untouched
    assert text.endswith('uuid.action = "keep"\n')
    assert changes == ["ethernet0 Prod-LAN → DR-LAN", "uuid.action = keep"]
    assert text.replace('"DR-LAN"', '"Prod-LAN"').replace('uuid.action = "keep"\n', "") == VMX


def test_second_pass_changes_nothing():
    once, _ = rewrite_vmx(VMX, {"Prod-LAN": "DR-LAN"}, "keep")
    twice, changes = rewrite_vmx(once, {"Prod-LAN": "DR-LAN"}, "keep")
    assert twice == once and changes == []


def test_existing_uuid_action_is_replaced_and_crlf_kept():
    crlf = VMX.replace("\n", "\r\n") + 'uuid.action = "keep"\r\n'
    text, changes = rewrite_vmx(crlf, {}, "create")
    assert text.endswith('uuid.action = "create"\r\n') and text.count("uuid.action") == 1
    assert changes == ["uuid.action = create"]


@pytest.mark.parametrize("answer, action", [("moved", "keep"), ("copied", "create")])
def test_answers_map_to_uuid_actions(answer, action):
    assert UUID_ACTIONS[answer] == action


def test_same_name_mapping_and_no_action_leave_the_file_alone():
    text, changes = rewrite_vmx(VMX, {"Prod-LAN": "Prod-LAN"}, None)
    assert text == VMX and changes == []
