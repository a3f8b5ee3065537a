package main

// Datastore search (HostDatastoreBrowser.SearchDatastore_Task and
// SearchDatastoreSubFolders_Task): the simulator joins folder paths with "/", so a
// subfolder comes back as "[ds]/dir" (or "[ds] /dir" when the client asked for "[ds] ").
// ESXi reports "[ds] dir": the datastore in brackets, one space, the folder relative to
// the datastore's root; the root itself is "[ds]". esxsim answers the same way.

import (
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func (w *Host) setupBrowser() {
	w.intercept["HostDatastoreBrowser.SearchDatastore_Task"] = w.searchDatastore
	w.intercept["HostDatastoreBrowser.SearchDatastoreSubFolders_Task"] = w.searchDatastore
}

// esxiFolderPath spells a search result's folder as ESXi does: "[ds] dir/sub", "[ds]" for the root.
func esxiFolderPath(p string) string {
	p = strings.TrimRight(normDsPath(p), "/")
	return strings.TrimRight(p, " ")
}

func (w *Host) searchDatastore(ctx *simulator.Context, m *simulator.Method) soap.HasFault {
	res := callOriginal(ctx, m) // the simulator runs the search before it answers
	fixTaskEntity(res, w)
	t, ok := taskResult(res)
	if !ok || t.Info.State != types.TaskInfoStateSuccess {
		return res
	}
	var result types.AnyType
	switch r := t.Info.Result.(type) {
	case types.HostDatastoreBrowserSearchResults:
		r.FolderPath = esxiFolderPath(r.FolderPath)
		result = r
	case types.ArrayOfHostDatastoreBrowserSearchResults:
		out := make([]types.HostDatastoreBrowserSearchResults, len(r.HostDatastoreBrowserSearchResults))
		for i, x := range r.HostDatastoreBrowserSearchResults {
			x.FolderPath = esxiFolderPath(x.FolderPath)
			out[i] = x
		}
		result = types.ArrayOfHostDatastoreBrowserSearchResults{HostDatastoreBrowserSearchResults: out}
	default:
		return res
	}
	simulator.Map.Update(t, []types.PropertyChange{{Name: "info.result", Val: result}})
	return res
}
