package proxy

// SetBeforeCommitForTest installs f to run between authorization and the
// commit of every open, the window of SPEC §4.1 step 8.
func (s *Server) SetBeforeCommitForTest(f func()) { s.beforeCommit = f }
