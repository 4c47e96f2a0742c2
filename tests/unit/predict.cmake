# Prefetch predictor (client/predict.c): digests, selection against a brute-force reference,
# prediction and counters, API misuse.
if(CMOCKA_FOUND AND TARGET kvt_predict)
	add_executable(test_predict ${PROJECT_SOURCE_DIR}/tests/unit/test_predict.c)
	target_link_libraries(test_predict PRIVATE kvt_predict PkgConfig::CMOCKA m)
	kvt_add_test(test_predict COMMAND $<TARGET_FILE:test_predict> LABELS fast)
endif()
