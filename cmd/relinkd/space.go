package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// topHolders is how many holders the scan summary names per filesystem.
const topHolders = 5

// spaceSummary is the end of `relinkd scan`: where the space held by
// deleted-but-open files is, per filesystem. It covers the files listed
// (the watch rules', or every one with --all); Unlisted* say what the
// files left out hold, so that a disk filled outside the rules shows.
type spaceSummary struct {
	Summary           bool        `json:"summary"` // always true: tells this object from the file records
	Filesystems       []fsSummary `json:"filesystems"`
	Files             int         `json:"files"`
	Allocated         uint64      `json:"allocated"`
	Size              uint64      `json:"size"`
	UnlistedFiles     int         `json:"unlisted_files"`
	UnlistedAllocated uint64      `json:"unlisted_allocated"`
}

type fsSummary struct {
	MountPoint string          `json:"mountpoint"`
	FSType     string          `json:"fstype"`
	Dev        string          `json:"dev"`
	Files      int             `json:"files"`
	Allocated  uint64          `json:"allocated"`
	Size       uint64          `json:"size"`
	Holders    []holderSummary `json:"holders"` // the topHolders largest
	HolderN    int             `json:"holder_count"`
}

type holderSummary struct {
	PID       int    `json:"pid"`
	Comm      string `json:"comm"`
	UID       uint32 `json:"uid"`
	Files     int    `json:"files"`
	Allocated uint64 `json:"allocated"`
}

// summarize sums up the listed rows per filesystem, and what all the
// sweep's candidates hold beyond them.
func summarize(pol *policy.Policy, rows []row, all []scanner.Candidate) spaceSummary {
	listed := make([]scanner.Candidate, len(rows))
	for i, r := range rows {
		listed[i] = *r.c
	}
	s := spaceSummary{Summary: true, Filesystems: []fsSummary{}}
	for _, u := range pol.Host().DeletedOpen(listed) {
		f := fsSummary{MountPoint: u.MountPoint, FSType: u.FSType, Dev: u.Dev, Files: u.Files,
			Allocated: u.Allocated, Size: u.Size, HolderN: len(u.Holders), Holders: []holderSummary{}}
		for _, h := range u.Holders[:min(len(u.Holders), topHolders)] {
			f.Holders = append(f.Holders, holderSummary{PID: h.PID, Comm: h.Comm, UID: h.UID, Files: h.Files, Allocated: h.Allocated})
		}
		s.Filesystems = append(s.Filesystems, f)
		s.Files += u.Files
		s.Allocated += u.Allocated
		s.Size += u.Size
	}
	if len(listed) < len(all) {
		var files int
		var alloc uint64
		for _, u := range pol.Host().DeletedOpen(all) {
			files += u.Files
			alloc += u.Allocated
		}
		s.UnlistedFiles, s.UnlistedAllocated = max(files-s.Files, 0), alloc-min(alloc, s.Allocated)
	}
	return s
}

func printSummaryJSON(w io.Writer, s spaceSummary) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(s)
}

// printSummary prints the summary as a table after the file table.
func printSummary(w io.Writer, s spaceSummary) error {
	if len(s.Filesystems) > 0 {
		fmt.Fprintln(w, "\nheld by deleted-but-open files (on disk: st_blocks×512, each inode once):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MOUNTPOINT\tFSTYPE\tFILES\tON DISK\tSIZE\tTOP HOLDERS")
		for _, f := range s.Filesystems {
			var hs []string
			for _, h := range f.Holders {
				hs = append(hs, fmt.Sprintf("%s[%d] %s", displayPath([]byte(h.Comm)), h.PID, humanBytes(h.Allocated)))
			}
			if more := f.HolderN - len(f.Holders); more > 0 {
				hs = append(hs, fmt.Sprintf("+%d more", more))
			}
			mp := f.MountPoint
			if mp == "" {
				mp = "(dev " + f.Dev + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", displayPath([]byte(mp)), f.FSType, f.Files,
				humanBytes(f.Allocated), humanBytes(f.Size), strings.Join(hs, ", "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if s.UnlistedFiles > 0 {
		fmt.Fprintf(w, "%d more deleted-but-open file(s) outside the watch rules hold %s (relinkd scan --all)\n",
			s.UnlistedFiles, humanBytes(s.UnlistedAllocated))
	}
	return nil
}
