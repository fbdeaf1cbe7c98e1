package state

import "fmt"

// migrate brings a state read from an older format up to Version. Each step
// is one case, tested on a fixture in testdata/.
//
// 1 -> 2: machines gain made_with, generation, retiring and labels. A
// version 1 record has none of them: its spec_hash is the old fingerprint
// (driver, disk, size, address), which plan checks once against the spec
// (so a setting the driver ignores does not replace every machine) before
// apply records made_with; its generation is the first; its node labels are
// recorded at the next apply. Nothing to rewrite here: the version number is
// what keeps an older provision, which would read the new spec_hash as its
// own and plan to replace every machine, from using this state.
func migrate(st *State, from int) error {
	for v := from; v < Version; v++ {
		switch v {
		case 1:
			for _, m := range st.Machines {
				if m.MadeWith != nil {
					return fmt.Errorf("version 1 state with made_with on %s: not written by provision", m.Name)
				}
			}
		default:
			return fmt.Errorf("no migration from state version %d", v)
		}
	}
	st.Version = Version
	return nil
}
