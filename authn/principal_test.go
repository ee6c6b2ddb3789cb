package authn

import "testing"

func TestCanServiceIsExact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		grant string
		want  bool
	}{
		{"worker", true},
		{"work", false},
		{"worker*", false},
		{"*", false},
		{"Worker", false},
		{"WORKER", false},
		{"worker ", false},
		{" worker", false},
		{"workers", false},
		{"worker/", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.grant, func(t *testing.T) {
			t.Parallel()
			p := &Principal{Services: []string{tt.grant}, Sandboxes: []string{tt.grant}}
			if got := p.CanService("worker"); got != tt.want {
				t.Errorf("grant %q: CanService(worker) = %v, want %v", tt.grant, got, tt.want)
			}
			if got := p.CanSandbox("worker"); got != tt.want {
				t.Errorf("grant %q: CanSandbox(worker) = %v, want %v", tt.grant, got, tt.want)
			}
		})
	}
}

func TestCanServiceEdges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    *Principal
		ask  string
		want bool
	}{
		{"nil principal", nil, "worker", false},
		{"no grants", &Principal{}, "worker", false},
		{"empty name with empty grant", &Principal{Services: []string{""}}, "", false},
		{"second of several grants", &Principal{Services: []string{"browser", "worker"}}, "worker", true},
		{"sandbox grant is not a service grant", &Principal{Sandboxes: []string{"worker"}}, "worker", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.p.CanService(tt.ask); got != tt.want {
				t.Errorf("CanService(%q) = %v, want %v", tt.ask, got, tt.want)
			}
		})
	}
}
