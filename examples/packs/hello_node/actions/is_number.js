const isNumber = require('is-number');

module.exports = function run({ value }) {
  return { value, is_number: isNumber(value) };
};
