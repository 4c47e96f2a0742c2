# Include rules of issue 13 that no compiler checks (tests/unit/check_includes.sh): no include
# cycle among the headers of daemon/ and proto/, nothing in proto/ includes client/, and the
# script's own check that it catches both.
foreach(c cycles proto)
	kvt_add_test(unit_includes_${c}
		COMMAND sh ${PROJECT_SOURCE_DIR}/tests/unit/check_includes.sh ${PROJECT_SOURCE_DIR} ${c}
		LABELS fast unit)
endforeach()
kvt_add_test(unit_includes_selftest
	COMMAND sh ${PROJECT_SOURCE_DIR}/tests/unit/check_includes.sh --selftest LABELS fast unit)
