package e2e

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The manifests in deploy/kubernetes are checked offline: every file is
// YAML with apiVersion, kind and metadata.name; the DaemonSet has the
// properties the README promises, its capabilities are exactly the
// unit's, and TestContainerMode runs the binary with its command,
// arguments, mounts, capabilities and ConfigMap. No API server checks
// them here (no kubectl, kubeconform or cluster on the CI machine).

const k8sDir = "../deploy/kubernetes"

// k8sObject is the part of a manifest every object has.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
}

// k8sDaemonSet models the fields of the DaemonSet the tests look at.
type k8sDaemonSet struct {
	k8sObject `yaml:",inline"`
	Spec      struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				HostPID         bool `yaml:"hostPID"`
				HostNetwork     bool `yaml:"hostNetwork"`
				SecurityContext struct {
					AppArmorProfile struct {
						Type string `yaml:"type"`
					} `yaml:"appArmorProfile"`
				} `yaml:"securityContext"`
				Containers []k8sContainer `yaml:"containers"`
				Volumes    []k8sVolume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Name            string   `yaml:"name"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	SecurityContext struct {
		Privileged               *bool `yaml:"privileged"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		RunAsUser                *int  `yaml:"runAsUser"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port string `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"livenessProbe"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	VolumeMounts []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		ReadOnly         bool   `yaml:"readOnly"`
		MountPropagation string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
}

type k8sVolume struct {
	Name     string `yaml:"name"`
	HostPath *struct {
		Path string `yaml:"path"`
		Type string `yaml:"type"`
	} `yaml:"hostPath"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
}

type k8sConfigMap struct {
	k8sObject `yaml:",inline"`
	Data      map[string]string `yaml:"data"`
}

// decodeManifest decodes the one YAML document of deploy/kubernetes/name
// into v.
func decodeManifest(t *testing.T, name string, v any) {
	t.Helper()
	b := []byte(readFile(t, filepath.Join(k8sDir, name)))
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: more than one YAML document (%v)", name, err)
	}
}

// relinkdContainer returns the DaemonSet and its relinkd container.
func relinkdContainer(t *testing.T) (*k8sDaemonSet, *k8sContainer) {
	t.Helper()
	var ds k8sDaemonSet
	decodeManifest(t, "daemonset.yaml", &ds)
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == "relinkd" {
			return &ds, c
		}
	}
	t.Fatal("daemonset.yaml: no container named relinkd")
	return nil, nil
}

// volume returns the DaemonSet's volume called name.
func (ds *k8sDaemonSet) volume(t *testing.T, name string) *k8sVolume {
	t.Helper()
	for i := range ds.Spec.Template.Spec.Volumes {
		if v := &ds.Spec.Template.Spec.Volumes[i]; v.Name == name {
			return v
		}
	}
	t.Fatalf("daemonset.yaml: no volume %q", name)
	return nil
}

// configMapConfig returns relinkd.yaml from the ConfigMap.
func configMapConfig(t *testing.T) string {
	t.Helper()
	var cm k8sConfigMap
	decodeManifest(t, "configmap.yaml", &cm)
	cfg, ok := cm.Data["relinkd.yaml"]
	if !ok {
		t.Fatal("configmap.yaml: no data.relinkd.yaml")
	}
	return cfg
}

// unitCapabilities returns the unit's CapabilityBoundingSet= and
// AmbientCapabilities= lists, without the CAP_ prefix, sorted.
func unitCapabilities(t *testing.T) (bounding, ambient []string) {
	t.Helper()
	for _, line := range strings.Split(readFile(t, "../deploy/systemd/relinkd.service"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		var caps []string
		for _, c := range strings.Fields(v) {
			caps = append(caps, strings.TrimPrefix(c, "CAP_"))
		}
		slices.Sort(caps)
		switch k {
		case "CapabilityBoundingSet":
			bounding = caps
		case "AmbientCapabilities":
			ambient = caps
		}
	}
	if len(bounding) == 0 || len(ambient) == 0 {
		t.Fatal("relinkd.service: no CapabilityBoundingSet= or AmbientCapabilities=")
	}
	return bounding, ambient
}

// containerfileEntrypoint returns the Containerfile's ENTRYPOINT (exec form).
func containerfileEntrypoint(t *testing.T) []string {
	t.Helper()
	for _, line := range strings.Split(readFile(t, filepath.Join(k8sDir, "Containerfile")), "\n") {
		if rest, ok := strings.CutPrefix(line, "ENTRYPOINT "); ok {
			var ep []string
			if err := yaml.Unmarshal([]byte(rest), &ep); err != nil {
				t.Fatalf("Containerfile: ENTRYPOINT %s: %v", rest, err)
			}
			return ep
		}
	}
	t.Fatal("Containerfile: no ENTRYPOINT")
	return nil
}

// TestKubernetesManifests checks deploy/kubernetes offline (see above).
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	for _, f := range files {
		var o k8sObject
		decodeManifest(t, filepath.Base(f), &o)
		if o.APIVersion == "" || o.Kind == "" {
			t.Errorf("%s: no apiVersion or kind", f)
		}
		if o.Kind != "Kustomization" && o.Metadata.Name == "" {
			t.Errorf("%s: no metadata.name", f)
		}
	}
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	decodeManifest(t, "kustomization.yaml", &kust)
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(kust.Resources, b) {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}

	ds, c := relinkdContainer(t)
	pod := ds.Spec.Template.Spec
	sc := c.SecurityContext
	bounding, ambient := unitCapabilities(t)
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	checks := []struct {
		name string
		ok   bool
	}{
		{"hostPID", pod.HostPID},
		{"not hostNetwork", !pod.HostNetwork},
		{"privileged: false", sc.Privileged != nil && !*sc.Privileged},
		{"allowPrivilegeEscalation: false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
		{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem},
		{"runAsUser: 0", sc.RunAsUser != nil && *sc.RunAsUser == 0},
		{"capabilities drop ALL", slices.Equal(sc.Capabilities.Drop, []string{"ALL"})},
		{"capabilities add = the unit's CapabilityBoundingSet " + strings.Join(bounding, ","), slices.Equal(add, bounding)},
		{"capabilities add = the unit's AmbientCapabilities " + strings.Join(ambient, ","), slices.Equal(add, ambient)},
		{"AppArmor unconfined (field)", pod.SecurityContext.AppArmorProfile.Type == "Unconfined"},
		{"AppArmor unconfined (annotation)", ds.Spec.Template.Metadata.Annotations["container.apparmor.security.beta.kubernetes.io/relinkd"] == "unconfined"},
		{"resources", c.Resources.Requests["cpu"] != "" && c.Resources.Requests["memory"] != "" && c.Resources.Limits["memory"] != ""},
		{"command = the Containerfile's ENTRYPOINT", slices.Equal(c.Command, containerfileEntrypoint(t))},
		{"--host-root /host", slices.Contains(c.Args, "--host-root") && c.Args[slices.Index(c.Args, "--host-root")+1] == "/host"},
		{"--config in the ConfigMap's mount", slices.Contains(c.Args, "--config") && c.Args[slices.Index(c.Args, "--config")+1] == "/etc/relinkd/relinkd.yaml"},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("daemonset.yaml: not %s", ch.name)
		}
	}
	if t.Failed() {
		t.Logf("capabilities add %v; unit: bounding %v, ambient %v", add, bounding, ambient)
	}

	// Mounts: the host's root read-only at /host, the rescue roots
	// read-write below it, both from the host (HostToContainer), and the
	// ConfigMap at /etc/relinkd.
	mounts := map[string]string{} // mountPath -> hostPath ("configmap:NAME")
	for _, m := range c.VolumeMounts {
		v := ds.volume(t, m.Name)
		switch {
		case v.HostPath != nil:
			mounts[m.MountPath] = v.HostPath.Path
			if m.MountPropagation != "HostToContainer" {
				t.Errorf("mount %s: propagation %q, want HostToContainer", m.MountPath, m.MountPropagation)
			}
			if want := filepath.Join("/host", v.HostPath.Path); m.MountPath != want {
				t.Errorf("hostPath %s mounted at %s, want %s (its place below the host root)", v.HostPath.Path, m.MountPath, want)
			}
			if ro := m.MountPath == "/host"; m.ReadOnly != ro {
				t.Errorf("mount %s: readOnly %v, want %v", m.MountPath, m.ReadOnly, ro)
			}
		case v.ConfigMap != nil:
			mounts[m.MountPath] = "configmap:" + v.ConfigMap.Name
		}
	}
	if mounts["/host"] != "/" {
		t.Errorf("the host's / is not mounted at /host: %v", mounts)
	}
	if mounts["/etc/relinkd"] != "configmap:relinkd" {
		t.Errorf("the ConfigMap is not mounted at /etc/relinkd: %v", mounts)
	}

	// The ConfigMap is a valid configuration; its rescue roots are on a
	// read-write mount; the probe asks its metrics endpoint.
	cfg := writeConfig(t, configMapConfig(t))
	if out, err := exec.Command(binary, "check-config", cfg).CombinedOutput(); err != nil {
		t.Errorf("relinkd check-config of the ConfigMap's relinkd.yaml: %v\n%s", err, out)
	}
	var conf struct {
		Rescue struct {
			Dirs         []string `yaml:"dirs"`
			ContainerDir string   `yaml:"container_dir"`
		} `yaml:"rescue"`
		Metrics struct {
			Listen string `yaml:"listen"`
		} `yaml:"metrics"`
	}
	if err := yaml.Unmarshal([]byte(configMapConfig(t)), &conf); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(conf.Rescue.Dirs, conf.Rescue.ContainerDir) {
		ok := false
		for mp, hp := range mounts {
			if mp != "/host" && !strings.HasPrefix(hp, "configmap:") && (d == hp || strings.HasPrefix(d, hp+"/")) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("rescue root %s is on no read-write hostPath mount: %v", d, mounts)
		}
	}
	host, port, err := net.SplitHostPort(conf.Metrics.Listen)
	if err != nil || (host != "0.0.0.0" && host != "" && host != "::") {
		t.Errorf("metrics.listen %q: the probe comes from the kubelet to the pod's address, listen on all (%v)", conf.Metrics.Listen, err)
	}
	probe := c.LivenessProbe.HTTPGet
	probePort := probe.Port
	for _, p := range c.Ports {
		if p.Name == probe.Port {
			probePort = strconv.Itoa(p.ContainerPort)
		}
	}
	if probe.Path != "/metrics" || probePort != port {
		t.Errorf("liveness probe %s on port %s (%s), want /metrics on metrics.listen's port %s", probe.Path, probe.Port, probePort, port)
	}
}
