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
endif()
