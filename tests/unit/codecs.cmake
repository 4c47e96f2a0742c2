# Codec tests (codecs/): round trips on random and real data, chain framing and corrupt input,
# SIMD == scalar and the rANS coder.
if(CMOCKA_FOUND AND TARGET kvt_codecs)
	foreach(t roundtrip chain simd dict)
		add_executable(test_codec_${t} ${PROJECT_SOURCE_DIR}/tests/unit/test_codec_${t}.c)
		target_link_libraries(test_codec_${t} PRIVATE kvt_codecs kvt_kvd PkgConfig::CMOCKA m)
		target_include_directories(test_codec_${t} PRIVATE ${PROJECT_SOURCE_DIR}/codecs)
		kvt_add_test(test_codec_${t} COMMAND $<TARGET_FILE:test_codec_${t}> LABELS fast)
	endforeach()
endif()
# kvtier-eval codec end to end on the one-layer excerpt: ratio, err, Pareto JSON, decoded dump.
if(TARGET kvtier-eval AND TARGET kvt_codecs)
	kvt_add_test(eval_codec_smoke
		COMMAND $<TARGET_FILE:kvtier-eval> codec --codec uq --write-decoded
			${CMAKE_CURRENT_BINARY_DIR}/eval_codec_smoke.kvd
			${PROJECT_SOURCE_DIR}/tests/data/sympy_l1h0_q128.kvd
		LABELS fast)
	kvt_add_test(eval_codec_pareto_json
		COMMAND $<TARGET_FILE:kvtier-eval> codec --codec fpx --codec uq --codec kivi --pareto
			--json ${PROJECT_SOURCE_DIR}/tests/data/sympy_l1h0_q128.kvd
		LABELS fast)
	set_tests_properties(eval_codec_pareto_json PROPERTIES
		PASS_REGULAR_EXPRESSION "\"codec\": \"fpx\".*\"lossless\": true")
	# dictionaries: calibrated on one excerpt; a dump of another geometry is refused with
	# a clear error; a chain that needs one calibrates on the dump itself without --dict
	kvt_add_test(eval_dict_calibrate
		COMMAND $<TARGET_FILE:kvtier-eval> dict -o ${CMAKE_CURRENT_BINARY_DIR}/head640.kvdict
			${PROJECT_SOURCE_DIR}/tests/data/sympy_head640.kvd
		LABELS fast)
	set_tests_properties(eval_dict_calibrate PROPERTIES FIXTURES_SETUP kvdict
		PASS_REGULAR_EXPRESSION "10 blocks of 64 tokens, 278584 bytes")
	kvt_add_test(eval_dict_wrong_model
		COMMAND $<TARGET_FILE:kvtier-eval> codec --codec uq:kb=1,cx=1
			--dict ${CMAKE_CURRENT_BINARY_DIR}/head640.kvdict
			${PROJECT_SOURCE_DIR}/tests/data/sympy_l1h0_q128.kvd
		LABELS fast)
	set_tests_properties(eval_dict_wrong_model PROPERTIES FIXTURES_REQUIRED kvdict
		PASS_REGULAR_EXPRESSION "dictionary does not fit this dump")
	kvt_add_test(eval_codec_self_calibrated
		COMMAND $<TARGET_FILE:kvtier-eval> codec --codec uq:kb=1,cx=1,dq=0.4 --json
			${PROJECT_SOURCE_DIR}/tests/data/sympy_l1h0_q128.kvd
		LABELS fast)
	set_tests_properties(eval_codec_self_calibrated PROPERTIES
		PASS_REGULAR_EXPRESSION "\"dict_bytes\": [1-9][0-9]*, \"ratio_incl_dict\"")
endif()
