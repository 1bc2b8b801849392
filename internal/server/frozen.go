package server

// FrozenSubjects counts identity×key pairs whose budget is frozen (a
// sustained breach) until an unfreeze proposal executes; 0 with no budgets.
// It feeds the custody_budget_frozen gauge.
func (s *Server) FrozenSubjects() int {
	if s.gov == nil {
		return 0
	}
	return s.gov.FrozenCount()
}
