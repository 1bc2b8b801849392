package hsm_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// notOnNSS is the one place that lists the hsm tests that do not run on NSS
// softokn, with the reason. Every other test that opens a token runs on
// SoftHSM and NSS (hsmtest.ForEach); TestEveryTokenTestRunsOnBothOrSaysWhy
// keeps this list complete and current. Parts of shared tests that differ by
// token are data, next to the test: missingKinds (NSS has no Ed25519),
// unverifiedOn, extractionRefused and probeDecisions.
var notOnNSS = map[string]string{
	"TestTokenRemovedFailsFastAndRecovers": "it takes SoftHSM's token directory away; NSS keeps its database files open, " +
		"so nothing goes away. Recovery on both tokens: TestRecoversAfterTheLibraryIsFinalizedBehindItsBack",
	"TestCopyToSessionObjectIsRefused": "NSS softokn 3.87 copies a non-modifiable, non-extractable key, even to an extractable copy " +
		"(and wraps it out), in FIPS mode too; the probe records it (extract_refused) and TestKeysCannotLeaveTheToken asserts that on NSS",
	"TestFunctionListLayoutMatchesExportedSymbols": "NSS exports only C_GetFunctionList, so its function list cannot be checked entry by entry against symbols",
	"TestProbeOnATokenThatRefusesReadableKeys":     "it runs on NSS in FIPS mode (hsmtest.NewNSSFIPS), the one token here that refuses readable keys",
	"TestDataObjectsCreateReadReplaceDestroy": "NSS softokn refuses private token data objects (profile NoDataObjects); " +
		"TestDataObjectsRefusedWhereTheProfileSaysSo checks the refusal on NSS",
	"TestChangePINRetiresTheOldPINAndTheNewOneLogsIn": "it probes the PIN with pkcs11-tool by token label, which cannot pass NSS its configdir init args",
	"TestPINChangeRevertRestoresTheOldPIN":            "as TestChangePINRetiresTheOldPINAndTheNewOneLogsIn (pkcs11-tool probe); its token-removal half needs SoftHSM's directory",
	"TestSealedTokenRemovedRecoversWithTheKeptPIN":    "it takes SoftHSM's token directory away, as TestTokenRemovedFailsFastAndRecovers",
	"TestCallsWaitForARecycleBoundedByTheirContext": "recycling exists for SoftHSM's leak of session objects (profile LeaksSessionObjects); " +
		"NSS frees them and is never recycled by default (TestRecycleAfterDefaultsFromTheProfile runs on both)",
	"TestNoRecycleUnlessConfigured":                  "as TestCallsWaitForARecycleBoundedByTheirContext: recycling is SoftHSM's",
	"TestRecycleUnderLoadFailsNoCall":                "as TestCallsWaitForARecycleBoundedByTheirContext: recycling is SoftHSM's",
	"TestRecyclingBoundsResidentMemoryOfKWPDataKeys": "it measures SoftHSM's leak of session objects, which NSS does not have",
	"TestSealedDataKeysKeepResidentMemoryFlat":       "it measures SoftHSM's leak of session objects, which NSS does not have",
	"TestModuleKeepsNoCopyOfThePIN": "its recoveries take SoftHSM's token directory away, and it probes PINs with pkcs11-tool, " +
		"as TestSealedTokenRemovedRecoversWithTheKeptPIN and TestChangePINRetiresTheOldPINAndTheNewOneLogsIn",
	"TestProfileCapsSessionsAndOmissionNeverWeakensTheReadBack": "it borrows other vendors' profiles, which needs SoftHSM's test PIN (it has the YubiHSM form) " +
		"and SoftHSM's permissive default of CKA_SENSITIVE=false to show that an omitted attribute is still checked",
}

// TestEveryTokenTestRunsOnBothOrSaysWhy reads this package's tests: a test
// that opens a token either runs on every kind or is listed in notOnNSS.
func TestEveryTokenTestRunsOnBothOrSaysWhy(t *testing.T) {
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	seen := map[string]bool{}
	var unlisted []string
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !(strings.HasPrefix(fn.Name.Name, "Test") || strings.HasPrefix(fn.Name.Name, "Fuzz")) {
				continue
			}
			name := fn.Name.Name
			seen[name] = true
			usesToken, everyKind := false, false
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "hsmtest" {
					usesToken = true
					switch sel.Sel.Name {
					case "ForEach", "Kinds", "NewKind":
						everyKind = true
					}
				}
				return true
			})
			if usesToken && !everyKind && notOnNSS[name] == "" {
				unlisted = append(unlisted, name)
			}
			if everyKind && notOnNSS[name] != "" {
				t.Errorf("%s runs on every token but is listed in notOnNSS", name)
			}
		}
	}
	sort.Strings(unlisted)
	if len(unlisted) > 0 {
		t.Errorf("tests that open a token on SoftHSM only, without a reason in notOnNSS: %v", unlisted)
	}
	for name := range notOnNSS {
		if !seen[name] {
			t.Errorf("notOnNSS lists %s, which does not exist", name)
		}
	}
}
