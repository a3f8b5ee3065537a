"""The pyVmomi adapter: the one place esxdr talks to ESXi or vCenter.

Modules (pyVmomi is imported only by the ones marked *):

- :mod:`~esxdr.model.host` — pure dataclasses of what a host looks like (the planner's input)
- :mod:`~esxdr.vsphere.session` * — connect, TLS pinning, re-login, request counter, fault translation
- :mod:`~esxdr.vsphere.inventory` * — one RetrievePropertiesEx → :class:`~esxdr.model.host.HostState`
- :mod:`~esxdr.vsphere.tasks` * — wait for many tasks / property conditions with WaitForUpdatesEx
- :mod:`~esxdr.vsphere.host` * — apply a host network plan (dry-run walks the same list)
- :mod:`~esxdr.vsphere.storage` * — rescans, verify-storage, resolve unresolved VMFS volumes
- :mod:`~esxdr.vsphere.vms` * — register VMs, answer questions, power on in batches, wait for heartbeats

This package's ``__init__`` imports nothing, so pure code can use ``observed`` without pyVmomi.
"""
