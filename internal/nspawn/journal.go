package nspawn

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
)

// Entry is one journal entry, as `journalctl -o json` prints it: every
// field whose value is text. MESSAGE is the logged line.
type Entry map[string]string

// Message is the entry's MESSAGE field.
func (e Entry) Message() string { return e["MESSAGE"] }

// FromManager reports whether systemd itself (PID 1) logged the entry,
// about a unit (UNIT=), rather than the unit's own processes.
func (e Entry) FromManager() bool { return e["_PID"] == "1" }

// parseEntry decodes one line of `journalctl -o json`. A field is a JSON
// string, an array of byte values when it is not valid UTF-8 (decoded to
// its bytes here), null when larger than journalctl's limit without --all,
// or an array of such when the field occurs more than once (the last is
// kept).
func parseEntry(line []byte) (Entry, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		return nil, err
	}
	e := Entry{}
	for k, v := range raw {
		if s, ok := fieldText(v); ok {
			e[k] = s
			continue
		}
		var many []json.RawMessage
		if json.Unmarshal(v, &many) == nil && len(many) > 0 {
			if s, ok := fieldText(many[len(many)-1]); ok {
				e[k] = s
			}
		}
	}
	return e, nil
}

func fieldText(v json.RawMessage) (string, bool) {
	if string(v) == "null" {
		return "", false // decoding null into a string would succeed, as ""
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s, true
	}
	var b []byte
	var nums []int
	if json.Unmarshal(v, &nums) != nil {
		return "", false
	}
	for _, n := range nums {
		if n < 0 || n > 255 {
			return "", false
		}
		b = append(b, byte(n))
	}
	return string(b), true
}

// Journal follows the container's journal (`journalctl --follow`) from its
// first entry on and keeps every entry. mu guards the fields below it.
type Journal struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	entries []Entry
	wake    chan struct{} // closed and replaced on every new entry
	err     error         // why following ended
}

// FollowJournal starts following the journal, restricted by journalctl
// match arguments (e.g. "-u", "relinkd.service"). It reads from the first
// entry on, so nothing logged before the call is missed, and never uses
// --after-cursor (journalctl 252 drops the first entry after the cursor
// when it is combined with -u).
func (c *Container) FollowJournal(args ...string) (*Journal, error) {
	j := &Journal{done: make(chan struct{}), wake: make(chan struct{})}
	all := append([]string{"--follow", "--lines=all", "--output=json", "--all", "--no-pager"}, args...)
	j.cmd = c.Command(context.Background(), "journalctl", all...)
	// nsenter forks journalctl into the container's PID namespace and waits
	// for it; a process group of their own lets Close end both.
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := j.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr syncBuffer
	j.cmd.Stderr = &stderr
	if err := j.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nspawn: journalctl: %w", err)
	}
	go func() {
		err := j.read(out)
		werr := j.cmd.Wait()
		j.mu.Lock()
		switch {
		case err != nil:
			j.err = err
		case werr != nil:
			j.err = fmt.Errorf("journalctl: %w: %s", werr, strings.TrimSpace(stderr.String()))
		default:
			j.err = io.EOF
		}
		close(j.wake)
		j.mu.Unlock()
		close(j.done)
	}()
	return j, nil
}

func (j *Journal) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			e, perr := parseEntry(line)
			if perr != nil {
				return fmt.Errorf("journalctl printed %q: %w", line, perr)
			}
			j.mu.Lock()
			j.entries = append(j.entries, e)
			close(j.wake)
			j.wake = make(chan struct{})
			j.mu.Unlock()
		}
		if err != nil {
			return nil
		}
	}
}

// Len returns how many entries have been read so far.
func (j *Journal) Len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries)
}

// Entries returns the entries read so far, from index from on.
func (j *Journal) Entries(from int) []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	if from >= len(j.entries) {
		return nil
	}
	return append([]Entry(nil), j.entries[from:]...)
}

// Wait returns the first entry at index from or later for which match
// holds, and its index, waiting for it until ctx is done or the journal
// ends.
func (j *Journal) Wait(ctx context.Context, from int, match func(Entry) bool) (Entry, int, error) {
	for {
		j.mu.Lock()
		for i := from; i < len(j.entries); i++ {
			if match(j.entries[i]) {
				e := j.entries[i]
				j.mu.Unlock()
				return e, i, nil
			}
		}
		from = max(from, len(j.entries))
		wake, err := j.wake, j.err
		j.mu.Unlock()
		if err != nil {
			return nil, -1, fmt.Errorf("nspawn: journal ended: %w", err)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, -1, ctx.Err()
		}
	}
}

// Close stops following.
func (j *Journal) Close() {
	_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGKILL)
	<-j.done
}
